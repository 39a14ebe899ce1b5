"""One memory plan (issue 18.2): `serve`'s GPU layers, GET /v1/plan and `localllm plan` agree.

On the old code `/v1/plan` and `localllm plan` ignored `vram_budget_mib` and allowed a q8 KV
cache that the engine never allocates, so they showed plans that `serve` never loaded."""
from __future__ import annotations

import json
import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from localllm.cli import main
from localllm.compose import gpu_layers_for, serving_plan
from localllm.config import Config
from localllm.models import probe
from localllm.server.app import create_app

MIB = 2**20


async def never_load(config, on_progress=None):  # the plan needs no loaded model
    raise RuntimeError("not loading a model in this test")


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, data_dir: Path, model_path: Path) -> dict[str, int]:
    """A GPU with 80 GB free and 8 GB of RAM, as the probes report them, the same for every caller."""
    memory = {"vram": 80_000 * MIB, "ram": 8_000 * MIB}
    monkeypatch.setattr(probe, "free_vram_bytes", lambda device=0: memory["vram"])
    monkeypatch.setattr(probe, "free_ram_bytes", lambda: memory["ram"])
    for key in list(os.environ):
        if key.startswith("LOCALLLM_") and key != "LOCALLLM_CACHE_DIR":
            monkeypatch.delenv(key)
    return memory


async def http_plan(config: Config, name: str) -> dict:
    server = TestServer(create_app(config, loader=never_load), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            response = await http.get(server.make_url("/v1/plan"), params={"model": name})
            assert response.status == 200, await response.text()
            return await response.json()
    finally:
        await server.close()


def cli_plan(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, config: Config, name: str) -> dict:
    for key, value in config.to_flat().items():
        if value is not None and key in ("vram_budget_mib", "parallel", "ctx", "batch"):
            monkeypatch.setenv(f"LOCALLLM_{key.upper()}", str(value))
    assert main(["plan", name, "--json", "--data-dir", str(config.data_dir)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("flat", [
    {"vram_budget_mib": 1400, "parallel": 2, "ctx": 4096},  # the budget leaves room for part of the layers
    {"vram_budget_mib": 0, "parallel": 4, "ctx": 32768},  # the whole GPU: all layers
], ids=["budget", "whole-gpu"])
async def test_serve_http_and_cli_get_the_same_plan(machine, flat, data_dir: Path, model_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch):
    config = Config.from_flat({"data_dir": str(data_dir), **flat})
    expected = serving_plan(config, model_path)
    over_http = await http_plan(config, "gemma3-270m")
    on_cli = cli_plan(capsys, monkeypatch, config, "gemma3-270m")
    assert {k: v for k, v in over_http.items() if k not in ("model", "explanation")} == expected.to_dict()
    assert on_cli == expected.to_dict()
    assert over_http["explanation"] == expected.explain()
    assert gpu_layers_for(model_path, config) == expected.n_gpu_layers  # what `serve` hands llama.cpp
    if flat["vram_budget_mib"]:
        assert 0 < on_cli["n_gpu_layers"] < 18  # the budget applies, not the 80 GB free


async def test_the_plan_budgets_for_the_f16_kv_cache_the_engine_allocates(machine, data_dir: Path, model_path: Path,
                                                                       capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch):
    machine["vram"], machine["ram"] = 0, 1_500 * MIB  # tight RAM: a q8 KV cache would fit twice the context
    config = Config.from_flat({"data_dir": str(data_dir), "parallel": 4, "ctx": 32768})
    on_cli = cli_plan(capsys, monkeypatch, config, "gemma3-270m")
    over_http = await http_plan(config, "gemma3-270m")
    assert on_cli["kv_type"] == over_http["kv_type"] == "f16" and on_cli["ctx"] == over_http["ctx"] == 8192
