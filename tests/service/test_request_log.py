"""One log line per request with what the handlers left on it; never the prompt unless asked."""
from __future__ import annotations

import logging

import pytest
from aiohttp import web

from localllm.config import Config
from localllm.server.auth import KEY_ID, USAGE_TOKENS
from localllm.server.request_log import (COMPLETION_TOKENS, MODEL_NAME, PROMPT_TOKENS, REQUEST_ID, TTFT_S,
                                         request_log_middleware)
from localllm.server.state import CONFIG_KEY
from localllm.service.logs import JournalFormatter, configure_logging, stderr_is_journal


async def completion(request: web.Request) -> web.Response:
    body = await request.json()
    request[KEY_ID] = "ops"
    request[MODEL_NAME] = body["model"]
    request[PROMPT_TOKENS], request[COMPLETION_TOKENS] = 5, 7
    request[USAGE_TOKENS] = 12
    request[TTFT_S] = 0.025
    return web.json_response({"id": request[REQUEST_ID]})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def failing(request: web.Request) -> web.Response:
    raise web.HTTPBadRequest()


def make_app(config: Config | None = None) -> web.Application:
    app = web.Application(middlewares=[request_log_middleware])
    if config is not None:
        app[CONFIG_KEY] = config
    app.router.add_post("/v1/completions", completion)
    app.router.add_get("/v1/fail", failing)
    app.router.add_get("/health", health)
    return app


def request_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "localllm.requests"]


async def test_one_line_per_request_with_tokens_ttft_status_and_key(aiohttp_client, caplog):
    caplog.set_level(logging.INFO, logger="localllm.requests")
    client = await aiohttp_client(make_app())
    response = await client.post("/v1/completions", json={"model": "m1", "prompt": "the secret prompt"},
                                 headers={"X-Request-Id": "abc-123"})
    assert response.status == 200 and response.headers["X-Request-Id"] == "abc-123"
    [line] = request_lines(caplog)
    for part in ("id=abc-123", "method=POST", "path=/v1/completions", "status=200", "model=m1", "key=ops",
                 "prompt_tokens=5", "completion_tokens=7", "tokens=12", "ttft_ms=25", "duration_ms="):
        assert part in line
    assert "secret prompt" not in caplog.text


async def test_errors_get_their_status_and_probes_stay_quiet(aiohttp_client, caplog):
    caplog.set_level(logging.INFO, logger="localllm.requests")
    client = await aiohttp_client(make_app())
    assert (await client.get("/v1/fail", headers={"X-Request-Id": "bad id with spaces"})).status == 400
    assert (await client.get("/health")).status == 200  # debug level only
    [line] = request_lines(caplog)
    assert "status=400" in line and "model=-" in line and "id=req-" in line


async def test_prompts_are_logged_only_with_log_prompts_at_debug(aiohttp_client, caplog):
    caplog.set_level(logging.DEBUG, logger="localllm.requests")
    client = await aiohttp_client(make_app(Config.from_flat({"log_prompts": True})))
    await client.post("/v1/completions", json={"model": "m1", "prompt": "the secret prompt"})
    assert "the secret prompt" in caplog.text
    caplog.clear()
    client = await aiohttp_client(make_app(Config.from_flat({})))
    await client.post("/v1/completions", json={"model": "m1", "prompt": "the secret prompt"})
    assert request_lines(caplog) and "the secret prompt" not in caplog.text


def test_journal_format_has_a_priority_prefix_and_no_timestamp():
    formatter = JournalFormatter()
    record = logging.LogRecord("localllm.requests", logging.WARNING, __file__, 1, "request %s", ("id=x",), None)
    assert formatter.format(record) == "<4>localllm.requests: request id=x"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "two\nlines", (), None)
    assert formatter.format(record) == "<6>x: two\n<6>lines"


def test_journal_detection_and_level(monkeypatch: pytest.MonkeyPatch):
    assert not stderr_is_journal({})
    assert not stderr_is_journal({"JOURNAL_STREAM": "1:1"})  # set, but stderr is some other stream
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        configure_logging("warning", journal=True)
        assert root.level == logging.WARNING and isinstance(root.handlers[0].formatter, JournalFormatter)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
