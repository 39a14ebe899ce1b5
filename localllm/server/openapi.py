"""OpenAPI 3.1 description of the server's own routes, served at GET /openapi.json.

Kept by hand, next to the routes; tests/server check that it names exactly the
routes the application registers, so neither can drift alone.
"""
from __future__ import annotations

from aiohttp import web

_ERROR = {"$ref": "#/components/schemas/Error"}
_JSON_BODY = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}


def _op(summary: str, *, body: bool = False, stream: bool = False, errors: tuple[int, ...] = ()) -> dict:
    ok: dict = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    if stream:
        ok["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    responses = {"200": ok} | {str(code): {"description": _REASONS[code],
                                          "content": {"application/json": {"schema": _ERROR}}} for code in errors}
    op = {"summary": summary, "responses": responses}
    if body:
        op["requestBody"] = _JSON_BODY
    return op


_REASONS = {400: "Invalid request", 401: "Missing or wrong API key", 404: "Unknown model",
            409: "Model busy", 413: "Body too large", 429: "Rate limited or queue full (see Retry-After)", 503: "Model not ready"}
_GENERATION_ERRORS = (400, 401, 404, 413, 429, 503)

PATHS: dict[str, dict[str, dict]] = {
    "/v1/chat/completions": {"post": _op("Chat completion (OpenAI)", body=True, stream=True, errors=_GENERATION_ERRORS)},
    "/v1/completions": {"post": _op("Text completion (OpenAI)", body=True, stream=True, errors=_GENERATION_ERRORS)},
    "/v1/embeddings": {"post": _op("Embeddings (OpenAI)", body=True, errors=_GENERATION_ERRORS)},
    "/v1/messages": {"post": _op("Messages (Anthropic; errors in Anthropic's shape)", body=True, stream=True,
                                 errors=_GENERATION_ERRORS)},
    "/v1/messages/count_tokens": {"post": _op("Prompt tokens of a Messages body (Anthropic)", body=True,
                                              errors=(400, 401, 404, 503))},
    "/v1/models": {"get": _op("Models served", errors=(401, 503))},
    "/v1/models/{model_id}": {"get": _op("One model, as /v1/models lists it (OpenAI)", errors=(401, 404))},
    "/v1/responses": {"post": _op("Responses API (OpenAI): input items, instructions, function tools, "
                                  "text.format, previous_response_id", body=True, stream=True,
                                  errors=_GENERATION_ERRORS)},
    "/v1/responses/input_tokens": {"post": _op("Count a Responses request's input tokens (OpenAI)", body=True,
                                               errors=(400, 401, 404, 503))},
    "/v1/responses/{response_id}": {"get": _op("A stored response (OpenAI)", errors=(401, 404)),
                                    "delete": _op("Delete a stored response (OpenAI)", errors=(401, 404))},
    "/tokenize": {"post": _op("Text to token ids, optionally with pieces (llama-server)", body=True,
                              errors=(400, 401, 404, 503))},
    "/detokenize": {"post": _op("Token ids to text (llama-server)", body=True, errors=(400, 401, 404, 503))},
    "/apply-template": {"post": _op("Render chat messages with the model's template, no generation "
                                    "(llama-server)", body=True, errors=(400, 401, 404, 503))},
    "/v1/stats": {"get": _op("Engine, slot and per-key statistics (JSON)", errors=(401, 503))},
    "/health": {"get": _op("Liveness: the process answers")},
    "/ready": {"get": _op("Readiness: model loaded and engine loop running", errors=(503,))},
    "/metrics": {"get": _op("Prometheus metrics")},
    "/openapi.json": {"get": _op("This document")},
    "/v1/plan": {"get": _op("Memory plan for ?model=NAME: GPU layers, context, slots, KV type", errors=(401, 404))},
    "/admin/models/load": {"post": _op("Load a local model (returns when loaded)", body=True,
                                          errors=(400, 401, 404, 429, 503))},
    "/admin/models/unload": {"post": _op("Unload an idle model (not the default one)", body=True,
                                            errors=(400, 401, 404, 409))},
    "/admin/models/pull": {"post": _op("Download a model; progress as server-sent events", body=True, stream=True,
                                       errors=(400, 401, 404))},
}


def _ndjson(summary: str, errors: tuple[int, ...]) -> dict:
    """An Ollama route: NDJSON lines unless the body says `stream: false`; errors as `{"error": "..."}`."""
    op = _op(summary, body=True, errors=errors)
    op["responses"]["200"]["content"]["application/x-ndjson"] = {"schema": {"type": "string"}}
    return op


PATHS.update({  # Ollama's API (ollama_routes.py, ollama_models.py)
    "/api/chat": {"post": _ndjson("Chat (Ollama)", _GENERATION_ERRORS)},
    "/api/generate": {"post": _ndjson("Generate from a prompt, templated or raw (Ollama)", _GENERATION_ERRORS)},
    "/api/embed": {"post": _op("Embeddings of one or more inputs (Ollama)", body=True, errors=_GENERATION_ERRORS)},
    "/api/embeddings": {"post": _op("Embedding of one prompt (Ollama, older)", body=True, errors=_GENERATION_ERRORS)},
    "/api/tags": {"get": _op("Local models (Ollama)", errors=(401,))},
    "/api/show": {"post": _op("Model details, template and capabilities (Ollama)", body=True, errors=(400, 401, 404))},
    "/api/ps": {"get": _op("Loaded models (Ollama)", errors=(401,))},
    "/api/pull": {"post": _ndjson("Download a model, progress as NDJSON (Ollama; admin)", (400, 401, 404, 409))},
    "/api/delete": {"delete": _op("Delete a model's local files (Ollama; admin)", body=True, errors=(400, 401, 404, 409))},
    "/api/version": {"get": _op("Ollama API version (no key needed)")},
})


def document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "localllm", "version": "0.1.0",
                 "description": "OpenAI-compatible LLM server on llama.cpp."},
        "paths": PATHS,
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["message", "type"],
                "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                               "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(document())
