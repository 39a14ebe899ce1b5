"""Hostile-client soak: many concurrent clients mix bad inputs with good requests.

    .venv/bin/python scripts/soak_hostile.py                      # starts its own `localllm serve`
    .venv/bin/python scripts/soak_hostile.py --url http://127.0.0.1:8080 --pid 1234
    .venv/bin/python scripts/soak_hostile.py --clients 64 --duration-s 120 --json /tmp/soak.json

Passes (exit 0) when, after the run: /health answers, no slot is busy and nothing waits,
8 concurrent good requests all succeed (nothing leaked), the server's RSS grew by at most
--rss-budget-mib, every bad request got a 4xx in OpenAI's error shape, and every good request
got a 200, or a 429 with Retry-After when slots and queue were full (load shed, counted apart:
clients that hang up mid-stream keep their slot until the server's next write notices).
The response cache is off (an engine soak).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Case:
    """One kind of request: `bad` ones must get a 4xx in OpenAI's error shape."""

    name: str
    method: str
    path: str
    body: Callable[[], bytes] | None
    bad: bool
    content_type: str = JSON
    hang_up: bool = False
    """Read one chunk of a streamed answer, then close the connection."""


def _dump(value: object) -> Callable[[], bytes]:
    raw = json.dumps(value).encode()
    return lambda: raw


def _raw(text: str) -> Callable[[], bytes]:
    raw = text.encode()
    return lambda: raw


def _schema(schema: dict) -> Callable[[], bytes]:
    return _dump({"messages": [{"role": "user", "content": "Give me JSON."}], "max_tokens": 8,
                  "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})


def _chat(content: str, **extra: object) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra}


NESTED = "[" * 100_000 + "]" * 100_000
CASES = [
    # Good requests: short, so the soak exercises admission and teardown, not long decodes.
    Case("chat", "POST", "/v1/chat/completions", _dump(_chat("Say hello.", temperature=0.7)), bad=False),
    Case("chat stream", "POST", "/v1/chat/completions",
         _dump(_chat("Count to five.", stream=True, temperature=0.7)), bad=False),
    Case("completion n=2", "POST", "/v1/completions",
         _dump({"prompt": "The capital of France is", "max_tokens": 8, "n": 2, "temperature": 0.9}), bad=False),
    Case("embeddings", "POST", "/v1/embeddings", _dump({"input": ["hello", "world"]}), bad=False),
    Case("models", "GET", "/v1/models", None, bad=False),
    Case("hang-up mid-stream", "POST", "/v1/chat/completions",
         _dump(_chat("Tell me a long story.", stream=True, max_tokens=64)), bad=False, hang_up=True),
    # Bad requests from issue 14.
    Case("invalid last prompt", "POST", "/v1/completions",
         _dump({"prompt": [[2], [2], [2], [999_999_999]], "max_tokens": 4}), bad=True),
    Case("surrogate prompt in list", "POST", "/v1/completions",
         _raw('{"prompt": ["ok", "\\ud800"], "max_tokens": 4}'), bad=True),
    Case("minLength bomb", "POST", "/v1/chat/completions", _schema({"type": "string", "minLength": 100_000_000}),
         bad=True),
    Case("maxItems bomb", "POST", "/v1/chat/completions",
         _schema({"type": "array", "items": {"type": "integer"}, "maxItems": 100_000_000}), bad=True),
    Case("maxLength bomb", "POST", "/v1/chat/completions", _schema({"type": "string", "maxLength": 10_000_000}),
         bad=True),
    Case("bogus type", "POST", "/v1/chat/completions", _schema({"type": "foo"}), bad=True),
    Case("nested bogus type", "POST", "/v1/chat/completions",
         _schema({"type": "object", "properties": {"a": {"type": "bar"}}}), bad=True),
    Case("dangling $ref", "POST", "/v1/chat/completions", _schema({"$ref": "#/$defs/missing"}), bad=True),
    Case("bad regex", "POST", "/v1/chat/completions", _schema({"type": "string", "pattern": "(["}), bad=True),
    Case("empty-match repeat pattern", "POST", "/v1/chat/completions",
         _schema({"type": "string", "pattern": "^(a?){0,1000}$"}), bad=True),
    Case("nested body", "POST", "/v1/chat/completions", _raw(NESTED), bad=True),
    Case("surrogate content", "POST", "/v1/chat/completions",
         _raw('{"messages": [{"role": "user", "content": "\\udc80"}], "max_tokens": 4}'), bad=True),
    Case("surrogate embedding", "POST", "/v1/embeddings", _raw('{"input": "\\ud800x"}'), bad=True),
    Case("Infinity penalty", "POST", "/v1/chat/completions",
         _raw('{"messages": [{"role": "user", "content": "hi"}], "repeat_penalty": Infinity}'), bad=True),
    Case("NaN temperature", "POST", "/v1/chat/completions",
         _raw('{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'), bad=True),
    Case("top_k past vocab", "POST", "/v1/chat/completions", _dump(_chat("hi", top_k=10**9)), bad=True),
    Case("n=0", "POST", "/v1/chat/completions", _dump(_chat("hi", n=0)), bad=True),
    Case("no content", "POST", "/v1/chat/completions", _dump({"messages": [{"role": "user"}]}), bad=True),
    Case("nested logit_bias", "POST", "/v1/chat/completions",
         _dump(_chat("hi", logit_bias={"1": {"a": [1, 2]}})), bad=True),
    Case("long model name", "POST", "/v1/chat/completions", _dump(_chat("hi", model="m" * 10_000)), bad=True),
    Case("20001 messages", "POST", "/v1/chat/completions",
         _dump({"messages": [{"role": "user", "content": "hi"}] * 20_001, "max_tokens": 4}), bad=True),
    Case("text/plain body", "POST", "/v1/chat/completions", _dump(_chat("hi")), bad=True, content_type="text/plain"),
    Case("plan of a path", "GET", "/v1/plan?model=/etc/passwd", None, bad=True),
    Case("keep_alive NaN", "POST", "/v1/chat/completions", _raw(
        '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "keep_alive": NaN}'), bad=True),
    Case("prompt too long", "POST", "/v1/completions",
         _dump({"prompt": "word " * 40_000, "max_tokens": 4}), bad=True),
]


@dataclass(slots=True)
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    num_shed: int = 0
    """Good requests answered 429 + Retry-After (queue full)."""

    def fail(self, case: Case, why: str) -> None:
        if len(self.failures) < 200:
            self.failures.append(f"{case.name}: {why}")


def is_openai_error(payload: object) -> bool:
    error = payload.get("error") if isinstance(payload, dict) else None
    return isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error


async def send(session: aiohttp.ClientSession, url: str, case: Case, tally: Tally) -> None:
    tally.sent[case.name] += 1
    data = case.body() if case.body else None
    headers = {"Content-Type": case.content_type} if data is not None else {}
    async with session.request(case.method, url + case.path, data=data, headers=headers) as response:
        tally.statuses[(case.name, response.status)] += 1
        if case.hang_up:
            await response.content.readany()
            response.close()  # the server must abort the request and free its slot
            return
        body = await response.read()
    if case.bad:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not 400 <= response.status < 500:
            tally.fail(case, f"status {response.status}")
        elif not is_openai_error(payload):
            tally.fail(case, f"status {response.status} without OpenAI's error shape: {body[:120]!r}")
    elif response.status == 429 and "Retry-After" in response.headers:
        tally.num_shed += 1
    elif response.status != 200:
        tally.fail(case, f"good request got {response.status}: {body[:160]!r}")


async def client(url: str, deadline_s: float, rng: random.Random, tally: Tally, headers: dict[str, str]) -> None:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        while time.monotonic() < deadline_s:
            case = rng.choice(CASES)
            try:
                await send(session, url, case, tally)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                tally.fail(case, f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.1)  # a dead server refuses at once: do not spin


async def settle(url: str, headers: dict[str, str], timeout_s: float = 60.0) -> dict:
    """Waits until no slot is busy and nothing waits; returns the last /v1/stats."""
    async with aiohttp.ClientSession(headers=headers) as session:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                async with session.get(url + "/v1/stats") as response:
                    stats = await response.json()
            except aiohttp.ClientError as exc:  # the server is gone: the checks below fail
                return {"unreachable": str(exc)}
            idle = stats.get("num_busy_slots") == 0 and stats.get("num_waiting") == 0
            if idle or time.monotonic() > deadline:
                return stats
            await asyncio.sleep(0.5)


async def all_served(url: str, headers: dict[str, str], num_requests: int = 8) -> bool:
    """After the soak: as many concurrent good requests as a queue leak would refuse all succeed."""
    body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
    try:
        async with aiohttp.ClientSession(headers=headers) as session:
            async def one() -> int:
                async with session.post(url + "/v1/chat/completions", json=body) as response:
                    return response.status
            return all(s == 200 for s in await asyncio.gather(*(one() for _ in range(num_requests))))
    except aiohttp.ClientError:
        return False


async def health(url: str) -> int:
    try:
        async with aiohttp.ClientSession() as session, session.get(url + "/health") as response:
            return response.status
    except aiohttp.ClientError:
        return 0


async def soak(args: argparse.Namespace, pid: int) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    process = psutil.Process(pid)
    await settle(args.url, headers)
    rss_start = process.memory_info().rss
    tally = Tally()
    deadline = time.monotonic() + args.duration_s
    rng = random.Random(args.seed)
    await asyncio.gather(*(client(args.url, deadline, random.Random(rng.random()), tally, headers)
                           for _ in range(args.clients)))
    stats = await settle(args.url, headers)
    rss_end = process.memory_info().rss
    grown_mib = (rss_end - rss_start) / 2**20
    checks = {
        "health": await health(args.url) == 200,
        "no busy slots": stats.get("num_busy_slots") == 0,
        "nothing waiting": stats.get("num_waiting") == 0,
        "8 concurrent good requests served after": await all_served(args.url, headers),
        f"rss grew <= {args.rss_budget_mib} MiB": grown_mib <= args.rss_budget_mib,
        "every answer as expected": not tally.failures,
    }
    return {
        "clients": args.clients, "duration_s": args.duration_s, "requests": sum(tally.sent.values()),
        "good_requests_shed_429": tally.num_shed,
        "by_case": {name: {str(s): n for (c, s), n in sorted(tally.statuses.items()) if c == name}
                    for name in tally.sent},
        "rss_start_mib": round(rss_start / 2**20, 1), "rss_end_mib": round(rss_end / 2**20, 1),
        "rss_grown_mib": round(grown_mib, 1), "checks": checks, "failures": tally.failures[:50],
    }


def start_server(args: argparse.Namespace) -> subprocess.Popen:
    """`localllm serve` on a free port with a scratch data and cache dir, response cache off."""
    scratch = Path(tempfile.mkdtemp(prefix="soak-"))
    env = {**os.environ, "LOCALLLM_DATA_DIR": str(scratch / "data"), "LOCALLLM_CACHE_DIR": str(scratch / "cache"),
           "LOCALLLM_CACHE_ENABLED": "false"}
    command = [sys.executable, "-m", "localllm.cli", "serve", "--port", str(args.port), "--parallel", "4",
               "--ctx", "8192"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(scratch / "serve.log", "w"),
                            start_new_session=True)


async def wait_ready(url: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url + "/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise SystemExit(f"{url} did not become ready in {timeout_s:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (else one is started on --port)")
    parser.add_argument("--pid", type=int, help="its process id, for RSS (required with --url)")
    parser.add_argument("--port", type=int, default=18431)
    parser.add_argument("--api-key")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration-s", type=float, default=120.0)
    parser.add_argument("--rss-budget-mib", type=float, default=200.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args()
    server = None
    if args.url is None:
        args.url = f"http://127.0.0.1:{args.port}"
        server = start_server(args)
        pid = server.pid
    elif args.pid is None:
        parser.error("--pid is needed with --url (the RSS check reads the server's memory)")
    else:
        pid = args.pid
    try:
        asyncio.run(wait_ready(args.url))
        result = asyncio.run(soak(args, pid))
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if server is not None and server.returncode != 0:
        print(f"soak: the server exited with {server.returncode}", file=sys.stderr)
        return 1
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
