"""Partial GPU offload turns llama.cpp's CUDA graphs off before the first decode (docs/gpu.md
finding 3); full offload and CPU-only leave them alone. On this CPU build the layer count is
only requested, but the guard's decision is the same code path a CUDA build takes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from localllm.engine.llama_backend import BackendConfig, LlamaBackend
from localllm.engine.llama_backend.backend import cuda_graphs_off_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("num_gpu_layers", "off"), [(0, False), (1, True), (18, True), (19, False), (-1, False)])
def test_only_a_split_model_turns_graphs_off(num_gpu_layers: int, off: bool):
    assert cuda_graphs_off_for(num_gpu_layers, 18) is off


def test_loading_a_partial_offload_sets_the_switch(model_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("GGML_CUDA_DISABLE_GRAPHS", raising=False)
    backend = LlamaBackend(BackendConfig(model_path, 1024, 1, 512, 2, num_gpu_layers=-1))
    backend.close()
    assert "GGML_CUDA_DISABLE_GRAPHS" not in os.environ
    backend = LlamaBackend(BackendConfig(model_path, 1024, 1, 512, 2, num_gpu_layers=4))
    backend.close()
    assert os.environ.get("GGML_CUDA_DISABLE_GRAPHS") == "1"
