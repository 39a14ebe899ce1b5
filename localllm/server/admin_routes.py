"""/health (liveness), /ready (readiness) and /v1/stats (what the TUI reads)."""
from __future__ import annotations

import asyncio
import dataclasses
import time

from aiohttp import web

from localllm.server.auth import IS_ADMIN, KEY_ID, KEYRING_KEY
from localllm.server.errors import ApiError
from localllm.telemetry import host_snapshot
from localllm.server.metrics import METRICS_KEY
from localllm.server.openapi import openapi_json
from localllm.server.response_cache import RESPONSE_CACHE_KEY
from localllm.server.state import MODEL_KEY, require_model
from localllm.server.tenants import SHARED, cache_namespace

# The engine loop refreshes its heartbeat every step and at least every 0.5 s when
# idle; one prompt chunk of n_batch tokens on a slow CPU takes a second or two.
STALL_AFTER_S = 15.0


def setup(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/v1/stats", stats)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)


def _key_usage(request: web.Request) -> dict[str, dict]:
    """Every key's usage for admin keys (and without keys configured); otherwise only the caller's."""
    usage = request.app[KEYRING_KEY].snapshot()
    if request.get(IS_ADMIN, False):
        return usage
    own = request.get(KEY_ID)
    return {own: usage[own]} if own in usage else {}


def _visible_slots(request: web.Request, slots: list[dict]) -> list[dict]:
    """Every slot's details for admin keys (and without keys configured); otherwise only those of
    the caller's own requests: another key's slot shows as busy or idle, with no request id, token
    counts or age (its prompt lengths and prefix-cache contents are that key's business).
    Slots of `cache_salt` requests, and every slot when keys share caches, count as not the caller's."""
    own = None if request.get(IS_ADMIN, False) else cache_namespace(request, {})
    visible = []
    for slot in slots:
        namespace = slot.pop("cache_namespace")  # never sent: a digest of another key's name
        if own is not None and (own == SHARED or namespace != own):
            slot |= {"state": "idle" if slot["state"] == "idle" else "busy", "request_id": None,
                     "num_cached_tokens": 0, "num_generated_tokens": 0, "num_reused_tokens": 0, "age_s": 0.0}
        visible.append(slot)
    return visible


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition; public like /health unless metrics_require_key. Keys appear by
    name only (never by anything derived from a secret); no prompts. Rendered in a worker: the
    response cache's figures come from its SQLite database."""
    return await asyncio.to_thread(request.app[METRICS_KEY].render)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """200 while the default model serves, even while other models load; the body carries
    queue depth and busy slots (for balancers) and every model's state and load progress."""
    manager = request.app[MODEL_KEY]
    models = {m.loaded.name if m.loaded else m.ref: {"status": m.status, "load_progress": round(m.progress, 3)}
              for m in manager.models}
    warnings = cache_warnings(request.app)
    if manager.loaded is None:
        state = "failed" if manager.error else "loading"
        return web.json_response({"status": state, "error": manager.error, "models": models, "warnings": warnings},
                                 status=503, headers={"Retry-After": "2"})
    engine = manager.loaded.engine
    snapshot = engine.stats()
    stalled_s = time.monotonic() - snapshot.loop_heartbeat_s
    body = {
        "status": "ready",
        "model": manager.loaded.name,
        "num_busy_slots": snapshot.num_busy_slots,
        "num_slots": snapshot.num_slots,
        "num_waiting": snapshot.num_waiting,
        "models": models,
        "warnings": warnings,
    }
    if not engine.is_running or stalled_s > STALL_AFTER_S:
        body["status"] = "stalled" if engine.is_running else "stopped"
        # a stalled loop may finish its long step; a stopped one waits for a restart
        return web.json_response(body, status=503, headers={"Retry-After": "5" if engine.is_running else "30"})
    return web.json_response(body)


def cache_warnings(app: web.Application) -> list[str]:
    """Caches the configuration asks for that could not open (unwritable cache_dir, ...):
    the server runs without them, and says so here as well as in the log."""
    warnings = []
    cache = app[RESPONSE_CACHE_KEY]
    if cache.config.enabled and not cache.is_active:
        warnings.append(f"response cache at {cache.config.directory} is off: {cache.error}")
    loaded = app[MODEL_KEY].loaded
    store = loaded.engine.prefix_state_store if loaded is not None else None
    state = store.stats() if store is not None else {"active": True}
    if not state["active"]:
        warnings.append(f"prefix states at {store.config.directory} are off: {state['error']}")
    return warnings


async def stats(request: web.Request) -> web.Response:
    """The default model's engine (or ?model=NAME's, if loaded), keys and host telemetry; with keys,
    a non-admin key sees aggregates and its own slots only (`_visible_slots`)."""
    manager = request.app[MODEL_KEY]
    name = request.query.get("model")
    served = manager.find(name)
    if served is None:  # never a load: a GET (even an <img> tag's, without Origin) changes nothing
        raise ApiError(404, f"The model {str(name)[:200]!r} is not loaded; POST /admin/models/load loads it.",
                       param="model", code="model_not_found")
    if served.loaded is None:
        if served is manager.default:
            await require_model(request, None)  # raises the default model's 503 (loading / failed)
        raise ApiError(503, f"The model {name!r} is still loading.", type="server_error", code="model_loading",
                       headers={"Retry-After": "2"})
    model = served.loaded
    snapshot = dataclasses.asdict(model.engine.stats())
    snapshot["heartbeat_age_s"] = time.monotonic() - snapshot.pop("loop_heartbeat_s")
    snapshot["slots"] = _visible_slots(request, snapshot["slots"])
    # An absolute path tells a tenant about the host: admin keys (and single-user mode) only.
    snapshot["model_path"] = str(model.path) if request.get(IS_ADMIN, False) else None
    snapshot["slot_ctx"] = model.engine.slot_ctx
    snapshot["keys"] = _key_usage(request)
    snapshot["host"] = await asyncio.to_thread(host_snapshot)  # NVML calls can take milliseconds
    snapshot["response_cache"] = await asyncio.to_thread(request.app[RESPONSE_CACHE_KEY].stats)
    snapshot["layer_split"] = model.engine.layer_split  # over RPC servers, if any
    store = model.engine.prefix_state_store
    snapshot["prefix_states"] = store.stats() if store is not None else {"active": False}
    snapshot["kv_prefix_store"] = snapshot["prefix_states"]  # the old name, kept for existing clients
    return web.json_response(snapshot)
