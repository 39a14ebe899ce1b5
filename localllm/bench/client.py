"""One streamed /v1/completions request, timed: TTFT, the gaps between content chunks, end to end."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp

from localllm.bench.workloads import RequestSpec

CACHE_HEADER = "X-LocalLLM-Cache"


@dataclass(slots=True)
class RequestResult:
    """What one request measured. Times are seconds from just before the request was sent."""

    tag: str = ""
    ttft_s: float | None = None
    """Until the first chunk with text."""
    e2e_s: float = 0.0
    """Until the end of the stream (or the error)."""
    itl_s: list[float] = field(default_factory=list)
    """Gaps between consecutive chunks with text."""
    num_chunks: int = 0
    """Chunks with text."""
    num_usage_tokens: int | None = None
    """usage.completion_tokens, when the server sent usage."""
    num_prompt_tokens: int | None = None
    num_cached_tokens: int | None = None
    """usage.prompt_tokens_details.cached_tokens (localllm, recent llama-server)."""
    error: str | None = None

    @property
    def num_output_tokens(self) -> int:
        return self.num_usage_tokens if self.num_usage_tokens is not None else self.num_chunks


def request_body(spec: RequestSpec, model: str | None, ignore_eos: bool) -> dict:
    body: dict = {"prompt": spec.prompt, "max_tokens": spec.max_tokens, "temperature": spec.temperature,
                  "stream": True, "stream_options": {"include_usage": True}}
    if ignore_eos:
        body["ignore_eos"] = True
    if model:
        body["model"] = model
    return body


async def send(session: aiohttp.ClientSession, base_url: str, spec: RequestSpec, *, model: str | None = None,
               ignore_eos: bool = True, headers: dict[str, str] | None = None) -> RequestResult:
    """Send one streamed completion and time it. Never raises for server or network trouble:
    the failure goes into `error` (HTTP status and body, an error chunk, or the exception)."""
    result = RequestResult(tag=spec.tag)
    headers = {**(headers or {}), **({CACHE_HEADER: "off"} if spec.bypass_cache else {})}
    started = time.perf_counter()
    try:
        async with session.post(base_url + "/v1/completions", json=request_body(spec, model, ignore_eos),
                                headers=headers) as response:
            if response.status != 200:
                result.error = f"HTTP {response.status}: {(await response.text())[:300]}"
            else:
                await _read_stream(response, result, started)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.e2e_s = time.perf_counter() - started
    return result


async def _read_stream(response: aiohttp.ClientResponse, result: RequestResult, started: float) -> None:
    last = started
    done = False
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            break
        chunk = json.loads(data)
        if "error" in chunk and not chunk.get("choices"):
            error = chunk["error"]
            result.error = "error chunk: " + (error.get("message", str(error)) if isinstance(error, dict) else str(error))
            return
        if _chunk_text(chunk):
            now = time.perf_counter()
            if result.ttft_s is None:
                result.ttft_s = now - started
            else:
                result.itl_s.append(now - last)
            last = now
            result.num_chunks += 1
        if chunk.get("usage"):
            _read_usage(chunk["usage"], result)
        done = done or any(c.get("finish_reason") for c in chunk.get("choices") or [])
    if not done:
        result.error = "stream ended without [DONE] or a finish_reason"


def _chunk_text(chunk: dict) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


def _read_usage(usage: dict, result: RequestResult) -> None:
    result.num_usage_tokens = usage.get("completion_tokens")
    result.num_prompt_tokens = usage.get("prompt_tokens")
    details = usage.get("prompt_tokens_details") or {}
    if details.get("cached_tokens") is not None:
        result.num_cached_tokens = details["cached_tokens"]
