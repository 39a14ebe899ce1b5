"""Model administration over HTTP: the memory plan and pulls with streamed progress."""
from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from aiohttp import web

from localllm.models.gguf import GGUFError, read_gguf
from localllm.models.hub import is_offline, pull, target_for
from localllm.engine.errors import BackendError
from localllm.models.manager import offload_plan, user_catalogue_path
from localllm.models.plan import ModelFacts, make_plan
from localllm.models.probe import free_ram_bytes, free_vram_bytes
from localllm.models.registry import CatalogueError, UnknownModel, load_catalogue
from localllm.models.store import ModelFileError, ModelStore
from localllm.server.errors import ApiError, bad_request
from localllm.server.schemas import read_json
from localllm.server.sse import SseWriter
from localllm.server.state import CONFIG_KEY, MODEL_KEY, require_model


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/plan", plan)
    app.router.add_post("/admin/models/pull", pull_model)
    app.router.add_post("/admin/models/load", load_model_route)
    app.router.add_post("/admin/models/unload", unload_model_route)


async def _model_ref(request: web.Request) -> str:
    body = await read_json(request)
    ref = body.get("model")
    if not isinstance(ref, str) or not ref:
        raise bad_request("model must be a model name", "model")
    return ref


async def load_model_route(request: web.Request) -> web.Response:
    """POST /admin/models/load {"model": NAME}: returns once it is loaded (or failed)."""
    loaded = await require_model(request, await _model_ref(request))
    return web.json_response({"model": loaded.name, "status": "loaded", "load_s": round(loaded.load_s, 3)})


async def unload_model_route(request: web.Request) -> web.Response:
    """POST /admin/models/unload {"model": NAME}: 409 while requests use it."""
    ref = await _model_ref(request)
    manager = request.app[MODEL_KEY]
    served = manager.find(ref)
    if served is None or served.loaded is None:
        raise ApiError(404, f"The model {ref!r} is not loaded.", param="model", code="model_not_found")
    if not await manager.unload(ref):
        raise ApiError(409, f"The model {ref!r} is serving requests; try again when it is idle.",
                       param="model", code="model_busy")
    return web.json_response({"model": ref, "status": "unloaded"})


def _store(request: web.Request) -> ModelStore:
    config = request.app[CONFIG_KEY]
    return ModelStore(config.data_dir, load_catalogue(user_catalogue_path(config)))


async def plan(request: web.Request) -> web.Response:
    """GET /v1/plan?model=NAME: layers, context, slots and KV type that fit free memory now."""
    config = request.app[CONFIG_KEY]
    name = request.query.get("model", config.engine.model)

    def compute() -> dict:
        path, _ = _store(request).resolve(name)
        if config.engine.rpc_servers:  # the plan the server loads with: over the rpc-servers too
            offload = offload_plan(path, config)
            return {**offload.to_dict(), "model": name, "explanation": offload.explain()}
        facts = ModelFacts.from_gguf(read_gguf(path))
        result = make_plan(facts, free_vram_bytes=free_vram_bytes(), free_ram_bytes=free_ram_bytes(),
                           slots=config.engine.parallel, ctx=config.engine.ctx, num_batch=config.engine.batch)
        return {**json.loads(result.to_json()), "model": name, "explanation": result.explain()}

    try:
        return web.json_response(await asyncio.to_thread(compute))
    except UnknownModel:
        raise ApiError(404, f"The model {name!r} is not in the catalogue.", param="model",
                       code="model_not_found") from None
    except (ModelFileError, GGUFError, CatalogueError) as exc:
        raise bad_request(str(exc), "model") from None
    except BackendError as exc:  # an rpc-server that cannot be reached or registered
        raise ApiError(503, str(exc), type="server_error", code="rpc_unavailable") from None


async def pull_model(request: web.Request) -> web.StreamResponse:
    """POST /admin/models/pull {"model": NAME | ORG/REPO/FILE.gguf, "quant"?}: SSE progress events
    `{"status": "downloading", "downloaded_bytes", "total_bytes"}`, then `done` or `error`, then [DONE]."""
    body = await read_json(request)
    ref, quant = body.get("model"), body.get("quant")
    if not isinstance(ref, str) or not ref or (quant is not None and not isinstance(quant, str)):
        raise bad_request("model must be a name or ORG/REPO/FILE.gguf; quant a string", "model")
    config = request.app[CONFIG_KEY]
    store = _store(request)
    try:
        target = target_for(ref, store.catalogue, quant)
    except (UnknownModel, CatalogueError) as exc:
        raise ApiError(404, str(exc), param="model", code="model_not_found") from None
    sse = SseWriter(request)
    await sse.start()
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    emit = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)  # noqa: E731

    def run() -> dict[str, Any]:
        try:
            record = pull(store, target, offline=is_offline(), endpoint=config.hf_endpoint,
                          tqdm_class=_progress_class(emit))
            return {"status": "done", **dataclasses.asdict(record)}
        except (ModelFileError, CatalogueError) as exc:
            return {"status": "error", "message": str(exc)}

    task = asyncio.create_task(asyncio.to_thread(run))
    try:
        while not task.done() or not events.empty():
            getter = asyncio.create_task(events.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                await sse.send(getter.result())
            else:
                getter.cancel()
        await sse.send(task.result())
        await sse.finish()
    except ConnectionError:
        pass  # the client left; the download finishes in its thread and is registered anyway
    return sse.response


def _progress_class(emit):
    """A tqdm stand-in that huggingface_hub drives; forwards byte counts, at most ~10 per second."""
    from tqdm import tqdm

    class Progress(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = False
            kwargs["mininterval"] = 0.1
            super().__init__(*args, **{**kwargs, "file": _Null()})
            self._final_sent = False

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            emit({"status": "downloading", "downloaded_bytes": int(self.n), "total_bytes": int(self.total or 0)})

        def close(self) -> None:
            if not getattr(self, "_final_sent", True):
                self._final_sent = True
                self.refresh()  # the last update may have fallen inside mininterval
            super().close()

    return Progress


class _Null:
    def write(self, _text: str) -> None:
        pass

    def flush(self) -> None:
        pass
