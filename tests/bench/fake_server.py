"""A scripted OpenAI-compatible streaming server on loopback, with known delays, run on its own thread."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Script:
    """How the fake server answers /v1/completions."""

    ttft_s: float = 0.05
    """Delay before the first text chunk."""
    itl_s: float = 0.01
    """Delay between text chunks."""
    tokens_per_chunk: int = 1
    """Tokens the server claims (usage) per chunk it sends."""
    send_usage: bool = True
    """Honour stream_options.include_usage with a final usage chunk."""
    fail_every: int = 0
    """Every n-th request (1-based) answers HTTP 500."""
    error_chunk_every: int = 0
    """Every n-th request sends two chunks, then an error chunk."""
    prefix_chars: int = 0
    """If > 0, a prompt whose first prefix_chars were seen before is warm: TTFT warm_ttft_s."""
    warm_ttft_s: float = 0.005


@dataclass
class Seen:
    body: dict
    headers: dict
    started_s: float
    finished_s: float = 0.0


@dataclass
class FakeServer:
    script: Script = field(default_factory=Script)
    requests: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    url: str = ""
    _count: int = 0
    _prefixes: set[str] = field(default_factory=set)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen = Seen(body, dict(request.headers), time.perf_counter())
        self.requests.append(seen)
        self._count += 1
        number = self._count
        if self.script.fail_every and number % self.script.fail_every == 0:
            return web.json_response({"error": {"message": f"scripted failure {number}", "type": "server_error"}},
                                     status=500)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._stream(request, body, number)
        finally:
            self.in_flight -= 1
            seen.finished_s = time.perf_counter()

    async def _stream(self, request: web.Request, body: dict, number: int) -> web.StreamResponse:
        script = self.script
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        prefix = body["prompt"][:script.prefix_chars] if script.prefix_chars else None
        warm = prefix is not None and prefix in self._prefixes
        if prefix is not None:
            self._prefixes.add(prefix)
        num_chunks = -(-body["max_tokens"] // script.tokens_per_chunk)
        await asyncio.sleep(script.warm_ttft_s if warm else script.ttft_s)
        for i in range(num_chunks):
            if i:
                await asyncio.sleep(script.itl_s)
            if script.error_chunk_every and number % script.error_chunk_every == 0 and i == 2:
                await _send(response, {"error": {"message": f"scripted stream error {number}"}})
                break
            last = i == num_chunks - 1
            await _send(response, {"object": "text_completion", "choices": [
                {"index": 0, "text": "tok ", "finish_reason": "length" if last else None}]})
        else:
            if script.send_usage and (body.get("stream_options") or {}).get("include_usage"):
                await _send(response, {"choices": [], "usage": {
                    "prompt_tokens": len(body["prompt"].split()), "completion_tokens": body["max_tokens"],
                    "prompt_tokens_details": {"cached_tokens": 100 if warm else 0}}})
        await response.write(b"data: [DONE]\n\n")
        return response

    def __enter__(self) -> FakeServer:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/v1/completions", self.completions)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()

        def serve() -> None:
            self._loop.run_until_complete(start())
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def _send(response: web.StreamResponse, payload: dict) -> None:
    await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
