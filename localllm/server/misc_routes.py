"""The small endpoints clients probe: GET /v1/models/{id}, llama-server's /tokenize, /detokenize
and /apply-template (its request and response shapes), and a 404 for an unknown /v1/ path that
names the endpoints this server has."""
from __future__ import annotations

import asyncio

from aiohttp import web

from localllm.models.manager import LoadedModel
from localllm.server.chat_path import render_chat
from localllm.server.errors import ApiError, bad_request
from localllm.server.openai_routes import model_entries
from localllm.server.request_log import MODEL_NAME, PROMPT_TOKENS
from localllm.server.schemas import flag, keep_alive, read_json
from localllm.server.state import MODEL_KEY, model_not_found, require_model
from localllm.types import InvalidParam

def setup(app: web.Application) -> None:
    app.router.add_get("/v1/models/{model_id:.+}", retrieve_model)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
    app.router.add_post("/apply-template", apply_template)


async def retrieve_model(request: web.Request) -> web.Response:
    """One entry of /v1/models (the same dict), or OpenAI's 404 naming the model."""
    model_id = request.match_info["model_id"]
    for entry in await model_entries(request):
        if entry["id"] == model_id:
            return web.json_response(entry)
    raise model_not_found(model_id)


async def tokenize(request: web.Request) -> web.Response:
    """{"content", "add_special" (false), "parse_special" (true), "with_pieces" (false)} ->
    {"tokens": [id, ...]} or, with pieces, [{"id", "piece"}] where a piece that is not valid
    UTF-8 on its own is a list of byte values (llama-server's shapes). Only counts and shows
    tokens: nothing is generated, so parsing special-token text (llama-server's default) is safe."""
    body = await read_json(request)
    content = body.get("content", "")
    if not isinstance(content, str):
        raise bad_request("content must be a string", "content")
    add_special, parse_special, with_pieces = (flag(body, name, default) for name, default in (
        ("add_special", False), ("parse_special", True), ("with_pieces", False)))
    model = await require_model(request, body.get("model"))
    with request.app[MODEL_KEY].lease(model, keep_alive(body)):
        tokens = await asyncio.to_thread(_tokens, model, content, add_special, parse_special, with_pieces)
    request[MODEL_NAME] = model.name
    request[PROMPT_TOKENS] = len(tokens)
    return web.json_response({"tokens": tokens})


def _tokens(model: LoadedModel, content: str, add_special: bool, parse_special: bool,
            with_pieces: bool) -> list:
    """Worker thread: tokenise within one slot's context (a longer text is refused early)."""
    engine = model.engine
    try:
        token_ids = engine.tokenize(content, add_special=add_special, parse_special=parse_special,
                                    max_tokens=engine.slot_ctx, param="content")
    except InvalidParam as exc:
        raise bad_request(str(exc), exc.param) from None
    if len(token_ids) > engine.slot_ctx:
        raise bad_request(f"content has {len(token_ids)} tokens, more than one request slot's context "
                          f"({engine.slot_ctx})", "content")
    if not with_pieces:
        return token_ids
    return [{"id": token_id, "piece": _piece(engine.token_bytes(token_id))} for token_id in token_ids]


def _piece(raw: bytes) -> str | list[int]:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


async def detokenize(request: web.Request) -> web.Response:
    """{"tokens": [id, ...]} -> {"content": text}; ids outside the vocabulary are a 400."""
    body = await read_json(request)
    tokens = body.get("tokens", [])
    if not isinstance(tokens, list):
        raise bad_request("tokens must be a list of token ids (integers)", "tokens")
    model = await require_model(request, body.get("model"))
    engine = model.engine
    if len(tokens) > engine.slot_ctx:  # before walking the entries: a body can hold millions
        raise bad_request(f"tokens has {len(tokens)} entries; at most {engine.slot_ctx} (one request slot's "
                          "context) are accepted", "tokens")
    if not all(type(t) is int for t in tokens):
        raise bad_request("tokens must be a list of token ids (integers)", "tokens")
    bad = next((t for t in tokens if not 0 <= t < engine.num_vocab), None)
    if bad is not None:
        raise bad_request(f"token id {bad} is outside this model's vocabulary (0..{engine.num_vocab - 1})", "tokens")
    with request.app[MODEL_KEY].lease(model, keep_alive(body)):
        content = await asyncio.to_thread(engine.detokenize, tokens)
    request[MODEL_NAME] = model.name
    return web.json_response({"content": content})


async def apply_template(request: web.Request) -> web.Response:
    """{"messages", ...} (a chat completions body) -> {"prompt": the rendered chat template},
    rendered and validated as /v1/chat/completions renders it; nothing is generated."""
    rendered = await render_chat(request, await read_json(request))
    request[MODEL_NAME] = rendered.model
    request[PROMPT_TOKENS] = len(rendered.token_ids)
    return web.json_response({"prompt": rendered.text})


@web.middleware
async def unknown_route_middleware(request: web.Request, handler) -> web.StreamResponse:
    """An unknown /v1/ path gets a 404 that lists the /v1/ endpoints there are (aiohttp's is a
    bare "Not Found"). Innermost: auth has already run, so keys are needed to see the list."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        if not request.path.startswith("/v1/") or request.match_info.route.resource is not None:
            raise  # a route of ours said 404 itself
        raise ApiError(404, f"Unknown endpoint: {request.method} {request.path[:200]!r}. This server's /v1 "
                       f"endpoints: {', '.join(_endpoints(request.app))}. GET /openapi.json describes them all.",
                       code="unknown_endpoint") from None


def _endpoints(app: web.Application) -> list[str]:
    found = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/v1/") and route.method != "HEAD" and f"{route.method} {path}" not in found:
            found.append(f"{route.method} {path}")
    return found
