"""Fixtures shared by the integration tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from localllm.engine.llama_backend import BackendConfig, LlamaBackend


@pytest.fixture(scope="module")
def scorer(model_path: Path):
    """A second context on the same (memory-mapped) model: scores a sequence alone."""
    backend = LlamaBackend(BackendConfig(model_path, 4096, 1, 512, 2))
    yield backend
    backend.close()
