"""Model administration over HTTP: the memory plan and pulls with streamed progress."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from aiohttp import web

from localllm.compose import serving_plan
from localllm.models.catalogue import is_model_ref, open_store
from localllm.models.gguf import GGUFError
from localllm.models.hub import (
    InsufficientSpace, PullCancelled, PullTarget, check_free_space, is_offline, pull, target_for,
)
from localllm.engine.errors import BackendError
from localllm.models.registry import (
    CatalogueError, UnknownModel, is_valid_quant, looks_like_hub_ref, split_hub_ref,
)
from localllm.models.store import ModelFileError, ModelStore
from localllm.server.errors import ApiError, bad_request, client_gone
from localllm.server.schemas import read_json
from localllm.server.sse import SseWriter
from localllm.server.state import CONFIG_KEY, MODEL_KEY, model_not_found, require_model

log = logging.getLogger(__name__)
T = TypeVar("T")
PULLS_KEY = web.AppKey("pulls", dict)
"""(hf_repo, file) -> the cancel Event of the pull fetching it: one pull per file at a time."""
MAX_PULLS = 4
"""Pulls at once; each holds a thread of its own while it runs."""
_DISCONNECT_POLL_S = 0.5


def setup(app: web.Application) -> None:
    app[PULLS_KEY] = {}
    app.on_shutdown.append(_cancel_pulls)
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
    """POST /admin/models/load {"model": NAME}: returns once it is loaded (or failed). For the
    default model it waits for its load, or retries one that failed."""
    ref = await _model_ref(request)
    manager = request.app[MODEL_KEY]
    if manager.find(ref) is manager.default and manager.default.loaded is None:
        try:
            loaded = await manager.get(None)
        except Exception as exc:  # what the loader raised: the same for every loader
            raise ApiError(503, f"The model {ref!r} failed to load: {exc}", type="server_error",
                           code="model_load_failed") from None
    else:
        loaded = await require_model(request, ref)
    return web.json_response({"model": loaded.name, "status": "loaded", "load_s": round(loaded.load_s, 3)})


async def unload_model_route(request: web.Request) -> web.Response:
    """POST /admin/models/unload {"model": NAME}: 409 while requests use it, and for the default
    model (it serves /ready and requests that name no model; restart to change it)."""
    ref = await _model_ref(request)
    manager = request.app[MODEL_KEY]
    served = manager.find(ref)
    if served is None or served.loaded is None:
        raise ApiError(404, f"The model {ref!r} is not loaded.", param="model", code="model_not_found")
    if served is manager.default:
        raise ApiError(409, f"The model {ref!r} is the default model and stays loaded; restart the server "
                       "with another --model to change it.", param="model", code="model_is_default")
    if not await manager.unload(ref):
        raise ApiError(409, f"The model {ref!r} is serving requests; try again when it is idle.",
                       param="model", code="model_busy")
    return web.json_response({"model": ref, "status": "unloaded"})


def _store(request: web.Request) -> ModelStore:
    return open_store(request.app[CONFIG_KEY])


async def plan(request: web.Request) -> web.Response:
    """GET /v1/plan?model=NAME: the plan `serve` would load NAME with now (compose.serving_plan:
    layers, context, slots and KV type that fit free memory, over the rpc-servers too).
    Registered models only (catalogue or pulled, by name; no model: the default one): a file
    path is a 404 like any unknown name, whether or not the file exists."""
    config = request.app[CONFIG_KEY]
    manager = request.app[MODEL_KEY]
    name = ref = request.query.get("model")
    if name is None or manager.find(name) is manager.default:  # the operator's model: a name or a path
        ref = config.engine.model
        name = manager.default.loaded.name if manager.default.loaded else ref
    elif not is_model_ref(name):
        raise model_not_found(name)

    def compute() -> dict:
        path, _ = _store(request).resolve(ref, allow_paths=ref == config.engine.model)
        offload = serving_plan(config, path)
        return {**offload.to_dict(), "model": name, "explanation": offload.explain()}

    try:
        return web.json_response(await asyncio.to_thread(compute))
    except UnknownModel:
        raise model_not_found(name) from None
    except (ModelFileError, GGUFError) as exc:  # CatalogueError: the middleware's 503 catalogue_invalid
        raise bad_request(str(exc), "model") from None
    except BackendError as exc:  # an rpc-server that cannot be reached or registered
        raise ApiError(503, str(exc), type="server_error", code="rpc_unavailable",
                       headers={"Retry-After": "10"}) from None


async def pull_model(request: web.Request) -> web.StreamResponse:
    """POST /admin/models/pull {"model": NAME | ORG/REPO/FILE.gguf, "quant"?}: SSE progress events
    `{"status": "downloading", "downloaded_bytes", "total_bytes"}`, then `done` or `error`, then [DONE].

    Before the stream: 400 for a bad quant or hub reference, 404 for an unknown model, 409 while the same file
    is being pulled, 429 past MAX_PULLS, 507 when the file would not fit the free disk.
    A client that leaves cancels the pull: its partial file is deleted, nothing registered."""
    body = await read_json(request)
    job = await start_pull(request, body.get("model"), body.get("quant"))
    return await stream_pull(request, job, SseWriter(request))


@dataclasses.dataclass(frozen=True, slots=True)
class PullJob:
    """A pull that passed its checks and holds its slot in PULLS_KEY until `stream_pull` ends it."""
    store: ModelStore
    target: PullTarget
    key: tuple[str, str]
    cancel: threading.Event


class EventWriter(Protocol):
    """How a pull's events reach the client: SSE here, NDJSON (or one JSON answer) for Ollama's /api/pull."""
    response: web.StreamResponse

    async def start(self) -> None: ...
    async def send(self, payload: dict) -> None: ...
    async def finish(self) -> None: ...


async def start_pull(request: web.Request, ref: object, quant: object) -> PullJob:
    """Checks a pull request (the errors listed in `pull_model`) and takes its slot; the caller
    must hand the job to `stream_pull`, which releases the slot when the pull ends."""
    if not isinstance(ref, str) or not ref or (quant is not None and not isinstance(quant, str)):
        raise bad_request("model must be a name or ORG/REPO/FILE.gguf; quant a string", "model")
    if quant is not None and not is_valid_quant(quant):
        raise bad_request("quant must be a GGUF quantisation name such as Q4_K_M, Q8_0, IQ4_XS or F16", "quant")
    if quant is not None and looks_like_hub_ref(ref):
        raise bad_request("a hub file has one quantisation: quant applies to catalogue names only", "quant")
    if looks_like_hub_ref(ref) and split_hub_ref(ref) is None:
        raise bad_request("model is not a valid hub file reference: want ORG/REPO/FILE.gguf with a safe "
                          "repository and file name (no '..', no further '/')", "model")
    config = request.app[CONFIG_KEY]
    store = await asyncio.to_thread(_store, request)  # reads the catalogues
    try:
        target = target_for(ref, store.catalogue, quant)
    except (UnknownModel, CatalogueError) as exc:
        raise ApiError(404, str(exc), param="model", code="model_not_found") from None
    pulls = request.app[PULLS_KEY]
    key = (target.hf_repo, target.file)
    if key in pulls:
        raise ApiError(409, f"{target.hf_repo}/{target.file} is being pulled already; wait for that pull "
                       "to finish.", param="model", code="pull_in_progress")
    if len(pulls) >= MAX_PULLS:
        raise ApiError(429, f"{MAX_PULLS} pulls are running; try again when one has finished.",
                       code="too_many_pulls", headers={"Retry-After": "10"})
    cancel = pulls[key] = threading.Event()  # held from here: a second pull of the file gets 409
    try:
        await _on_thread(lambda: check_free_space(store, target, offline=is_offline(), endpoint=config.hf_endpoint))
    except InsufficientSpace as exc:
        pulls.pop(key, None)
        raise ApiError(507, str(exc), type="server_error", param="model", code="insufficient_storage") from None
    except BaseException:
        pulls.pop(key, None)
        raise
    return PullJob(store, target, key, cancel)


async def stream_pull(request: web.Request, job: PullJob, writer: EventWriter,
                      convert: Callable[[dict[str, Any]], list[dict[str, Any]]] = lambda e: [e]
                      ) -> web.StreamResponse:
    """Runs the pull on its own thread, forwarding its events (each through `convert`, into the
    wire's shape); the slot in PULLS_KEY is held until the thread has ended (cancelled or not),
    so a new pull never races its cleanup."""
    config = request.app[CONFIG_KEY]
    pulls = request.app[PULLS_KEY]
    store, target, cancel = job.store, job.target, job.cancel
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def emit(event: dict[str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop has closed (shutdown): the pull is being cancelled
            pass

    def run() -> dict[str, Any]:
        try:
            record = pull(store, target, offline=is_offline(), endpoint=config.hf_endpoint,
                          tqdm_class=_progress_class(emit), cancel=cancel, check_space=False)
            return {"status": "done", **dataclasses.asdict(record)}
        except PullCancelled:
            return {"status": "error", "code": "cancelled", "message": "the pull was cancelled"}
        except InsufficientSpace as exc:
            return {"status": "error", "code": "insufficient_storage", "message": str(exc)}
        except (ModelFileError, CatalogueError) as exc:
            return {"status": "error", "message": str(exc)}
        except Exception:  # never a traceback to the client, never a half-registered file
            log.exception("pull of %s failed", target.name)
            return {"status": "error", "message": f"the pull of {target.name} failed; see the server log"}

    task = _on_thread(run, name=f"pull {target.name}")
    task.add_done_callback(lambda _: pulls.pop(job.key, None))
    try:
        await writer.start()
        await _forward(request, writer, events, task, convert)
        for payload in convert(task.result()):
            await writer.send(payload)
        await writer.finish()
    except ConnectionError:
        cancel.set()  # the thread stops at its next chunk; hf deletes the partial file
        if not task.done():
            log.info("client left: pull of %s cancelled", target.name)
    except asyncio.CancelledError:  # the handler itself was cancelled (shutdown, handler_cancellation)
        cancel.set()
        raise
    return writer.response


async def _forward(request: web.Request, writer: EventWriter, events: asyncio.Queue[dict[str, Any]],
                   task: asyncio.Future[dict[str, Any]],
                   convert: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> None:
    """Sends the pull's progress events until it ends; raises ConnectionResetError once the
    client has gone, even while no event flows (a stalled hub, a long sha256)."""
    while not task.done() or not events.empty():
        if client_gone(request):
            raise ConnectionResetError("the client closed the connection")
        getter = asyncio.ensure_future(events.get())
        try:
            await asyncio.wait({getter, task}, timeout=_DISCONNECT_POLL_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            for payload in convert(getter.result()):
                await writer.send(payload)


def _on_thread(fn: Callable[[], T], name: str = "pull") -> asyncio.Future[T]:
    """Runs `fn` on a daemon thread of its own (a pull may take an hour: it must not hold one
    of the default executor's threads) and returns a future of its result."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def main() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop has closed: nobody waits any more
            pass

    threading.Thread(target=main, name=name, daemon=True).start()
    return future


async def _cancel_pulls(app: web.Application) -> None:
    """On shutdown: every running pull stops at its next chunk and registers nothing."""
    for cancel in app[PULLS_KEY].values():
        cancel.set()


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
