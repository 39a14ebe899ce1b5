"""Typed application keys and how handlers get the model a request names."""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

from localllm.config import Config
from localllm.models.manager import LoadedModel, ModelLoadFailed, ModelManager
from localllm.models.registry import UnknownModel
from localllm.models.store import ModelFileError
from localllm.server.errors import ApiError

CONFIG_KEY = web.AppKey("config", Config)
MODEL_KEY = web.AppKey("models", ModelManager)
"""The ModelManager; `.loaded` / `.error` describe the default model."""


async def require_model(request: web.Request, ref: object = None) -> LoadedModel:
    """The loaded model a request names (None: the default), loading it if it is local.

    503 while the default model loads (requests do not pile up behind it); 404 for a
    name that is neither loaded nor available locally."""
    manager = request.app[MODEL_KEY]
    if ref is not None and not isinstance(ref, str):
        raise ApiError(400, "model must be a string", param="model")
    known = manager.find(ref)
    if known is None and isinstance(ref, str) and Path(ref).expanduser().exists():
        raise ApiError(404, "Models are named by catalogue name over HTTP, not by file path.", param="model",
                       code="model_not_found")
    if known is manager.default and manager.default.loaded is None:
        if manager.default.error:
            raise ApiError(503, f"The model failed to load: {manager.default.error}", type="server_error",
                           code="model_load_failed")
        raise ApiError(503, "The model is still loading.", type="server_error", code="model_loading",
                       headers={"Retry-After": "2"})
    try:
        return await manager.get(ref)
    except (UnknownModel, ModelFileError) as exc:
        raise ApiError(404, f"The model {ref!r} does not exist or is not downloaded: {exc}", param="model",
                       code="model_not_found") from None
    except ModelLoadFailed as exc:
        raise ApiError(503, f"The model {ref!r} failed to load: {exc}", type="server_error",
                       code="model_load_failed") from None
