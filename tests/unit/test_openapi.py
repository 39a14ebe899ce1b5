"""The OpenAPI document names exactly the routes the application registers."""
from __future__ import annotations

from pathlib import Path

from localllm.config import Config
from localllm.server.app import create_app
from localllm.server.openapi import document


def registered_routes(tmp_path: Path) -> set[tuple[str, str]]:
    app = create_app(Config.from_flat({"data_dir": str(tmp_path)}))
    return {(route.resource.canonical, route.method.lower()) for route in app.router.routes()
            if route.method != "HEAD"}


def test_openapi_document_matches_the_routes(tmp_path: Path):
    documented = {(path, method) for path, ops in document()["paths"].items() for method in ops}
    assert documented == registered_routes(tmp_path)


def test_generation_routes_document_their_error_statuses():
    ops = document()["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        assert {"400", "401", "429", "503"} <= set(ops[path]["post"]["responses"])
