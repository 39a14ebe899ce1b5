"""Run a level (closed loop: `concurrency` workers, each sends its next request when the last one ends)
and a sweep of levels."""
from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import asdict, dataclass

import aiohttp

from localllm.bench.client import RequestResult, send
from localllm.bench.stats import summarize
from localllm.bench.workloads import RequestSpec, WorkloadConfig, build_requests


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Where and how to send the requests."""

    base_url: str
    """Server root, e.g. http://127.0.0.1:8080 (a trailing /v1 is dropped)."""
    model: str | None = None
    """`model` field of every request; None lets the server choose."""
    api_key: str | None = None
    """Bearer key, if the server requires one."""
    timeout_s: float = 600.0
    """Longest wait for one request's next bytes."""
    warmup: bool = True
    """Send one short request (not counted) before each level."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", self.base_url.rstrip("/").removesuffix("/v1"))
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def num_requests_for(concurrency: int, rounds: int, minimum: int = 1) -> int:
    return max(minimum, concurrency * rounds)


async def run_specs(run: RunConfig, specs: list[RequestSpec], concurrency: int,
                    ignore_eos: bool = True) -> tuple[list[RequestResult], float]:
    """Send `specs` with at most `concurrency` in flight; a spec with `after` waits for that one.
    Returns the results in spec order and the wall time from the first send to the last answer."""
    results: list[RequestResult | None] = [None] * len(specs)
    finished = [asyncio.Event() for _ in specs]
    queue = iter(range(len(specs)))
    # A fresh connection per request: llama-server closes idle keep-alive connections,
    # which a pooled client would see as spurious errors.
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=run.timeout_s)

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        async def worker() -> None:
            for index in queue:
                spec = specs[index]
                if spec.after is not None:
                    await finished[spec.after].wait()
                try:
                    results[index] = await send(session, run.base_url, spec, model=run.model,
                                                ignore_eos=ignore_eos, headers=run.headers)
                finally:
                    finished[index].set()

        if run.warmup:
            await send(session, run.base_url, RequestSpec("warm up", 4, 0.0), model=run.model, headers=run.headers)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        elapsed = time.perf_counter() - started
    return [r for r in results if r is not None], elapsed


async def run_level(run: RunConfig, workload: WorkloadConfig, concurrency: int, num_requests: int,
                    salt: str | None = None) -> dict:
    """One level: build the workload's requests (salted afresh unless `salt` is given), send them, summarize."""
    specs = build_requests(workload, num_requests, concurrency, secrets.token_hex(3) if salt is None else salt)
    results, elapsed = await run_specs(run, specs, concurrency, workload.ignore_eos)
    return summarize(results, elapsed, concurrency)


async def run_sweep(run: RunConfig, workload: WorkloadConfig, concurrency_levels: list[int], rounds: int = 2,
                    num_requests: int | None = None, on_level=None) -> dict:
    """Every concurrency level in turn; `on_level(summary)` is called after each (progress output).
    Each level sends `num_requests`, or `rounds` x its concurrency."""
    levels = []
    for concurrency in concurrency_levels:
        count = num_requests or num_requests_for(concurrency, rounds)
        summary = await run_level(run, workload, concurrency, count)
        levels.append(summary)
        if on_level is not None:
            on_level(summary)
    return {"tool": "localllm bench", "base_url": run.base_url, "model": run.model,
            "workload": workload_json(workload), "levels": levels}


def workload_json(workload: WorkloadConfig) -> dict:
    out = asdict(workload)
    out["max_tokens"] = str(workload.max_tokens)
    out["prompt_tokens"] = None if workload.prompt_tokens is None else str(workload.prompt_tokens)
    return out
