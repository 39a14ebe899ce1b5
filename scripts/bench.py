"""Load generator for any OpenAI-compatible server: streamed completions at fixed concurrency.

    python scripts/bench.py http://127.0.0.1:8080 --concurrency 1 8 --max-tokens 128

For each concurrency level it runs `--rounds` waves of that many concurrent
streamed /v1/completions requests and prints aggregate output tokens/s, TTFT
and inter-token latency (ITL) percentiles. Tokens are counted as streamed
chunks (llama-server and localllm send one chunk per token when stop strings
are not in play); `ignore_eos` keeps every request at exactly max_tokens.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import aiohttp

PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how bread rises, step by step, for a beginner baker.",
    "Describe a walk through a busy market in a city you imagine.",
    "List and explain many reasons people enjoy learning languages.",
    "Tell the history of a fictional island nation from its founding.",
    "Write a detailed guide to caring for houseplants in winter.",
    "Describe the life cycle of a star from birth to its final stage.",
    "Write a letter from a traveller describing a long train journey.",
]


@dataclass
class Result:
    ttft_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    num_tokens: int = 0
    error: str | None = None


async def one_request(session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int, model: str | None) -> Result:
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0.8,
            "ignore_eos": True, "n_predict": max_tokens}
    if model:
        body["model"] = model
    result = Result()
    started = last = time.perf_counter()
    try:
        async with session.post(url + "/v1/completions", json=body) as response:
            if response.status != 200:
                result.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return result
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if not chunk.get("choices") or not chunk["choices"][0].get("text"):
                    continue
                now = time.perf_counter()
                if result.num_tokens == 0:
                    result.ttft_s = now - started
                else:
                    result.itl_s.append(now - last)
                last = now
                result.num_tokens += 1
    except aiohttp.ClientError as exc:
        result.error = str(exc)
    return result


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run_level(url: str, concurrency: int, rounds: int, max_tokens: int, model: str | None) -> dict:
    timeout = aiohttp.ClientTimeout(total=600)
    # A fresh connection per request: llama-server closes idle keep-alive connections,
    # which a pooled client would see as spurious errors.
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await one_request(session, url, "warm up", 4, model)
        results: list[Result] = []
        started = time.perf_counter()
        for r in range(rounds):
            wave = [one_request(session, url, PROMPTS[(r * concurrency + i) % len(PROMPTS)], max_tokens, model)
                    for i in range(concurrency)]
            results += await asyncio.gather(*wave)
        elapsed = time.perf_counter() - started
    ok = [r for r in results if r.error is None]
    itl = [x for r in ok for x in r.itl_s]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "output_tokens_per_s": sum(r.num_tokens for r in ok) / elapsed,
        "ttft_p50_ms": 1000 * pct([r.ttft_s for r in ok], 0.5),
        "ttft_p95_ms": 1000 * pct([r.ttft_s for r in ok], 0.95),
        "itl_p50_ms": 1000 * pct(itl, 0.5),
        "itl_p95_ms": 1000 * pct(itl, 0.95),
        "mean_tokens": statistics.mean(r.num_tokens for r in ok) if ok else 0,
        "first_error": next((r.error for r in results if r.error), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--model")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = parser.parse_args()
    url = args.url.rstrip("/").removesuffix("/v1")
    if not args.json:
        print(f"{'conc':>4} {'reqs':>4} {'err':>3} {'tok/s':>8} {'ttft p50':>9} {'ttft p95':>9} {'itl p50':>8} {'itl p95':>8}")
    for level in args.concurrency:
        row = asyncio.run(run_level(url, level, args.rounds, args.max_tokens, args.model))
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['concurrency']:>4} {row['requests']:>4} {row['errors']:>3} {row['output_tokens_per_s']:>8.1f} "
                  f"{row['ttft_p50_ms']:>7.0f}ms {row['ttft_p95_ms']:>7.0f}ms {row['itl_p50_ms']:>6.1f}ms {row['itl_p95_ms']:>6.1f}ms")


if __name__ == "__main__":
    main()
