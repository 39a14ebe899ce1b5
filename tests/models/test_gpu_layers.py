"""`--n-gpu-layers auto`: the memory plan's answer, turned into what llama.cpp expects."""
from __future__ import annotations

from pathlib import Path

import pytest

from localllm.config import Config
from localllm.models import probe
from localllm.compose import gpu_layers_for


@pytest.fixture
def config(data_dir: Path) -> Config:
    return Config.from_flat({"data_dir": str(data_dir), "parallel": 2, "ctx": 4096})


def with_free_vram(monkeypatch: pytest.MonkeyPatch, mib: int) -> None:
    monkeypatch.setattr(probe, "free_vram_bytes", lambda device=0: mib * 2**20)


def test_no_gpu_means_no_layers(config: Config, model_path: Path, monkeypatch: pytest.MonkeyPatch):
    with_free_vram(monkeypatch, 0)
    assert gpu_layers_for(model_path, config) == 0


def test_everything_fits_means_all_layers_and_the_output_layer(config: Config, model_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    with_free_vram(monkeypatch, 80_000)
    assert gpu_layers_for(model_path, config) == -1  # not 18: llama.cpp would keep the output layer on the CPU


def test_a_small_budget_gives_part_of_the_layers(config: Config, model_path: Path, monkeypatch: pytest.MonkeyPatch):
    with_free_vram(monkeypatch, 80_000)
    # 1,400 MiB less the margin (256) and the CUDA context (512): ~630 MiB for compute, KV and some layers
    budget = Config.from_flat({**config.to_flat(), "vram_budget_mib": 1400})
    assert 0 < gpu_layers_for(model_path, budget) < 18
    tiny = Config.from_flat({**config.to_flat(), "vram_budget_mib": 400})
    assert gpu_layers_for(model_path, tiny) == 0


def test_an_explicit_number_wins(data_dir: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch):
    with_free_vram(monkeypatch, 80_000)
    explicit = Config.from_flat({"data_dir": str(data_dir), "n_gpu_layers": 5})
    assert gpu_layers_for(model_path, explicit) == 5
