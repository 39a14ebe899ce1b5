"""Shared fixtures: an isolated data dir holding the bundled model, assembled once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from localllm.models.registry import load_catalogue
from localllm.models.store import ModelStore


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("localllm-data")


@pytest.fixture(scope="session")
def model_path(data_dir: Path) -> Path:
    path, _ = ModelStore(data_dir, load_catalogue()).resolve("gemma3-270m")
    return path
