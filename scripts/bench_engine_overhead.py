"""What the Python engine costs per generated token, against a bare llama.cpp loop.

One model load, one context; alternating, `--repeats` times each:
- bare: llama_decode of one token (llama_batch_get_one), then llama_sampler_sample with
  the chain llama-server runs for these settings (greedy, or top-k 40 / temperature /
  seeded dist): the floor any server over this llama.cpp pays per token;
- engine: one request through localllm's AsyncEngine (scheduler, batch, sampler, text,
  hand-off to the event loop), timed from its first token to its last.

    .venv/bin/python scripts/bench_engine_overhead.py --model /tmp/tiny.gguf [--temperature 0.8]
    # GPU: --n-gpu-layers -1; another revision: LOCALLLM_ROOT=/path/to/checkout

Prints median ms per token of both, their ratio and the difference in microseconds.
Single-stream decode is where per-token overhead shows: a 4 ms GPU step or a tiny model.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("LOCALLLM_ROOT", str(ROOT)))  # another checkout's localllm: before/after

from localllm.engine.llama_backend import BackendConfig, LlamaBackend  # noqa: E402  (llama_cpp before numpy)
import llama_cpp.llama_cpp as ll  # noqa: E402

from localllm.engine.async_engine import AsyncEngine  # noqa: E402
from localllm.types import SamplingParams  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea, there lived"


def bare_ms_per_token(backend: LlamaBackend, tokens: int, temperature: float) -> float:
    ctx = backend._ctx  # noqa: SLF001 - a benchmark of the raw calls beneath the engine
    ll.llama_memory_clear(ll.llama_get_memory(ctx), True)
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    if temperature == 0:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
    else:
        for sampler in (ll.llama_sampler_init_top_k(40), ll.llama_sampler_init_temp(temperature),
                        ll.llama_sampler_init_dist(1234)):
            ll.llama_sampler_chain_add(chain, sampler)
    prompt = backend.tokenize(PROMPT)
    array = (ll.llama_token * len(prompt))(*prompt)
    if ll.llama_decode(ctx, ll.llama_batch_get_one(array, len(prompt))) != 0:
        raise RuntimeError("prompt decode failed")
    token = ll.llama_sampler_sample(chain, ctx, -1)
    one = (ll.llama_token * 1)()
    started = time.perf_counter()
    for _ in range(tokens):
        one[0] = token
        if ll.llama_decode(ctx, ll.llama_batch_get_one(one, 1)) != 0:
            raise RuntimeError("decode failed")
        token = ll.llama_sampler_sample(chain, ctx, -1)
    elapsed = time.perf_counter() - started
    ll.llama_sampler_free(chain)
    ll.llama_memory_clear(ll.llama_get_memory(ctx), True)
    return 1000 * elapsed / tokens


async def engine_ms_per_token(engine: AsyncEngine, tokens: int, temperature: float) -> float:
    params = SamplingParams(temperature=temperature, max_tokens=tokens + 1, ignore_eos=True, seed=1234)
    first = last = 0.0
    count = 0
    async for delta in engine.generate(PROMPT, params):
        now = time.perf_counter()
        if count == 0:
            first = now
        last = now
        count += len(delta.token_ids)
    return 1000 * (last - first) / (count - 1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=16384)
    parser.add_argument("--n-gpu-layers", type=int, default=0)
    parser.add_argument("--json", dest="json_path", type=Path)
    args = parser.parse_args()

    backend = LlamaBackend(BackendConfig(args.model, args.ctx, args.parallel, 512, args.threads,
                                         num_gpu_layers=args.n_gpu_layers))
    engine = AsyncEngine(backend, model_name="bench", num_slots=args.parallel, slot_ctx=args.ctx // args.parallel,
                         num_batch_tokens=512, num_kv_cells_total=args.ctx)
    await engine.start()
    bare, ours = [], []
    try:
        await engine_ms_per_token(engine, 16, args.temperature)  # warm-up
        for _ in range(args.repeats):
            bare.append(await asyncio.to_thread(bare_ms_per_token, backend, args.tokens, args.temperature))
            ours.append(await engine_ms_per_token(engine, args.tokens, args.temperature))
    finally:
        await engine.stop()
    import localllm
    result = {"localllm": str(Path(localllm.__file__).parent), "model": str(args.model), "tokens": args.tokens, "temperature": args.temperature,
              "bare_ms": statistics.median(bare), "engine_ms": statistics.median(ours),
              "bare_all": bare, "engine_all": ours}
    result["ratio"] = result["engine_ms"] / result["bare_ms"]
    result["overhead_us"] = 1000 * (result["engine_ms"] - result["bare_ms"])
    print(f"{result['localllm']}: {args.model.name}, temperature {args.temperature}, {args.tokens} tokens x {args.repeats}: "
          f"bare {result['bare_ms']:.3f} ms/token, engine {result['engine_ms']:.3f} ms/token, "
          f"ratio {result['ratio']:.3f}, overhead {result['overhead_us']:.0f} us/token")
    if args.json_path:
        args.json_path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
