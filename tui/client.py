"""The TUI's only HTTP code: a small async client for the localllm server's API.

Every call has a timeout, so a slow or vanished server never stalls a worker for long.
Errors come out as `ServerUnreachable` (no answer) or `ServerError` (an HTTP error answer).
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

DEFAULT_URL = "http://127.0.0.1:8080"
POLL_TIMEOUT_S = 3.0
CONNECT_TIMEOUT_S = 5.0


class ServerUnreachable(Exception):
    """No HTTP answer: connection refused, reset, DNS failure or timeout."""


class ServerError(Exception):
    """The server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Client:
    """One aiohttp session per client, opened lazily inside the running event loop."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._session = aiohttp.ClientSession(headers=headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, *, timeout_s: float = POLL_TIMEOUT_S, **kwargs: Any) -> tuple[int, str]:
        try:
            async with self._http().request(method, self.url + path,
                                            timeout=aiohttp.ClientTimeout(total=timeout_s), **kwargs) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ServerUnreachable(_describe(exc)) from exc
        if response.status >= 400:
            raise ServerError(response.status, _error_message(text))
        return response.status, text

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        _, text = await self._request(method, path, **kwargs)
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ServerError(200, f"not JSON from {path}") from exc

    async def stats(self) -> dict[str, Any]:
        return await self._json("GET", "/v1/stats")

    async def metrics(self) -> str:
        return (await self._request("GET", "/metrics"))[1]

    async def models(self) -> list[dict[str, Any]]:
        return (await self._json("GET", "/v1/models")).get("data", [])

    async def routes(self) -> set[str]:
        """The paths /openapi.json lists (for feature detection)."""
        return set((await self._json("GET", "/openapi.json")).get("paths", {}))

    async def plan(self, model: str) -> dict[str, Any]:
        return await self._json("GET", "/v1/plan", params={"model": model}, timeout_s=30.0)

    async def load(self, model: str) -> Any:
        return await self._json("POST", "/admin/models/load", json={"model": model}, timeout_s=600.0)

    async def unload(self, model: str) -> Any:
        return await self._json("POST", "/admin/models/unload", json={"model": model}, timeout_s=60.0)

    async def pull(self, model: str) -> AsyncIterator[dict[str, Any]]:
        """Yields the server's progress events; ends after `done` or `error`."""
        async for event in self._sse("/admin/models/pull", {"model": model}):
            yield event

    async def chat(self, model: str, messages: list[dict[str, str]], *, max_tokens: int = 512,
                   temperature: float = 0.7) -> AsyncIterator[dict[str, Any]]:
        """Yields OpenAI chat.completion.chunk objects; closing the generator aborts the request server-side."""
        body = {"model": model, "messages": messages, "stream": True, "max_tokens": max_tokens,
                "temperature": temperature, "stream_options": {"include_usage": True}}
        async for chunk in self._sse("/v1/chat/completions", body):
            yield chunk

    async def _sse(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=300.0)
        try:
            async with self._http().post(self.url + path, json=body, timeout=timeout) as response:
                if response.status >= 400:
                    raise ServerError(response.status, _error_message(await response.text()))
                try:
                    async for raw in response.content:
                        line = raw.decode("utf-8", "replace").strip()
                        if not line.startswith("data:"):
                            continue
                        payload = line[len("data:"):].strip()
                        if payload == "[DONE]":
                            return
                        yield json.loads(payload)
                finally:
                    response.close()  # a stream left early closes its connection: the server aborts the request
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ServerUnreachable(_describe(exc)) from exc


def _error_message(text: str) -> str:
    try:
        error = json.loads(text).get("error")
        return str(error.get("message") if isinstance(error, dict) else error or text)
    except (ValueError, AttributeError):
        return text.strip()[:200] or "no message"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})" if exc.os_error else "cannot connect"
    return str(exc) or type(exc).__name__
