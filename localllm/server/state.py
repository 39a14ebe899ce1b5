"""Typed application keys and the served model's holder."""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from localllm.config import Config
from localllm.models.manager import LoadedModel
from localllm.server.errors import ApiError


@dataclass(slots=True)
class ModelHolder:
    """The model the server serves; `loaded` is None while it loads or after it failed."""

    loaded: LoadedModel | None = None
    error: str | None = None
    owns_engine: bool = True


CONFIG_KEY = web.AppKey("config", Config)
MODEL_KEY = web.AppKey("model", ModelHolder)


def require_model(request: web.Request) -> LoadedModel:
    """The loaded model, or a 503 that says whether it loads or failed."""
    holder = request.app[MODEL_KEY]
    if holder.loaded is None:
        if holder.error:
            raise ApiError(503, f"The model failed to load: {holder.error}", type="server_error",
                           code="model_load_failed")
        raise ApiError(503, "The model is still loading.", type="server_error", code="model_loading",
                       headers={"Retry-After": "2"})
    return holder.loaded
