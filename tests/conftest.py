"""Shared fixtures: an isolated data dir holding the bundled model, assembled once per session."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from localllm.models.registry import load_catalogue
from localllm.models.store import ModelStore


@pytest.fixture(scope="session", autouse=True)
def isolated_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tests never read or write the user's response cache (~/.cache/localllm)."""
    path = tmp_path_factory.mktemp("localllm-cache")
    old = os.environ.get("LOCALLLM_CACHE_DIR")
    os.environ["LOCALLLM_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("LOCALLLM_CACHE_DIR", None)
    else:
        os.environ["LOCALLLM_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("localllm-data")


@pytest.fixture(scope="session")
def model_path(data_dir: Path) -> Path:
    path, _ = ModelStore(data_dir, load_catalogue()).resolve("gemma3-270m")
    return path
