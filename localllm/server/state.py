"""Typed application keys and how handlers get the model a request names."""
from __future__ import annotations

from aiohttp import web

from localllm.config import Config
from localllm.models.catalogue import is_model_ref
from localllm.models.manager import LoadedModel, ModelLoadFailed, ModelManager, NoRoomForModel
from localllm.models.registry import UnknownModel
from localllm.models.store import ModelFileError
from localllm.server.errors import ApiError

CONFIG_KEY = web.AppKey("config", Config)
MODEL_KEY = web.AppKey("models", ModelManager)
"""The ModelManager; `.loaded` / `.error` describe the default model."""
MAX_MODEL_NAME_CHARS = 256
"""Longer names are refused before they reach the file system ("File name too long")."""

LOAD_FAILED_RETRY_AFTER = "30"
"""Seconds a client waits after a failed load: the next request tries the load again."""


async def require_model(request: web.Request, ref: object = None) -> LoadedModel:
    """The loaded model a request names (None: the default), loading it if it is local.

    503 while the default model loads (requests do not pile up behind it); 404 for a
    name that is neither loaded nor available locally, and for anything that is not a model
    name (a file path gets the same answer whether or not the file exists); 429 when
    max_loaded_models are busy."""
    manager = request.app[MODEL_KEY]
    if ref is not None and not isinstance(ref, str):
        raise ApiError(400, "model must be a string", param="model")
    if ref is not None and (len(ref) > MAX_MODEL_NAME_CHARS or not ref.isprintable()):
        raise ApiError(400, f"model must be a name of at most {MAX_MODEL_NAME_CHARS} printable characters",
                       param="model")
    known = manager.find(ref)
    if known is None and isinstance(ref, str) and not is_model_ref(ref):
        raise model_not_found(ref)
    if known is manager.default and manager.default.loaded is None:
        if manager.default.error:
            raise ApiError(503, f"The model failed to load: {manager.default.error}", type="server_error",
                           code="model_load_failed", headers={"Retry-After": LOAD_FAILED_RETRY_AFTER})
        raise ApiError(503, "The model is still loading.", type="server_error", code="model_loading",
                       headers={"Retry-After": "2"})
    try:
        return await manager.get(ref)
    except UnknownModel:
        raise model_not_found(ref) from None
    except ModelFileError as exc:
        raise ApiError(404, f"The model {ref!r} is not downloaded: {exc}", param="model",
                       code="model_not_found") from None
    except NoRoomForModel as exc:
        raise ApiError(429, f"The model {ref!r} cannot be loaded now: {exc}.", type="rate_limit_error",
                       param="model", code="model_capacity", headers={"Retry-After": "5"}) from None
    except ModelLoadFailed as exc:
        raise ApiError(503, f"The model {ref!r} failed to load: {exc}", type="server_error",
                       code="model_load_failed", headers={"Retry-After": LOAD_FAILED_RETRY_AFTER}) from None


def model_not_found(ref: object) -> ApiError:
    """One answer for every name that is not a registered model: no file-system oracle."""
    return ApiError(404, f"The model {str(ref)[:200]!r} does not exist here: name a catalogue model or a pulled "
                    "one (GET /v1/models lists them).", param="model", code="model_not_found")
