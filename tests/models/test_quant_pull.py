"""`localllm pull NAME` picks the quantisation by the memory at hand (sizes from the hub)."""
from __future__ import annotations

from pathlib import Path

import pytest

from localllm.models.registry import load_catalogue
from tests.models.hub_server import HubServer
from tests.models.test_hub import cli

REPO = "test-org/multi-quant"
MIB = 2**20


@pytest.fixture()
def hub(model_path: Path, tmp_path: Path):
    big = tmp_path / "q8.gguf"
    small = tmp_path / "q2.gguf"
    with big.open("wb") as f:  # sparse: only the sizes matter for the choice
        f.truncate(300 * MIB)
    with small.open("wb") as f:
        f.truncate(150 * MIB)
    with HubServer() as server:
        server.state.add(REPO, "m-Q4_K_M.gguf", model_path, load_catalogue()["gemma3-270m"].sha256)
        server.state.add(REPO, "m-Q8_0.gguf", big, "0" * 64)
        server.state.add(REPO, "m-Q2_K.gguf", small, "1" * 64)
        yield server


def catalogue(data_dir: Path) -> dict[str, str]:
    (data_dir / "models.toml").write_text(
        f'[models.multi]\nhf_repo = "{REPO}"\nquant = "Q4_K_M"\n'
        '[models.multi.files]\nQ4_K_M = "m-Q4_K_M.gguf"\nQ8_0 = "m-Q8_0.gguf"\nQ2_K = "m-Q2_K.gguf"\n')
    return {"LOCALLLM_DATA_DIR": str(data_dir)}


def test_default_quant_when_a_higher_one_would_use_over_half(hub: HubServer, tmp_path: Path):
    env = {**catalogue(tmp_path), "HF_ENDPOINT": hub.url}
    done = cli(["pull", "multi", "--ram-mib", "600"], env)  # 480 MiB usable: Q8_0 (300) is over half
    assert done.returncode == 0, done.stderr
    assert "quantisation Q4_K_M" in done.stdout and "default" in done.stdout


def test_plenty_of_memory_picks_the_higher_quant_and_says_why(hub: HubServer, tmp_path: Path):
    env = {**catalogue(tmp_path), "HF_ENDPOINT": hub.url}
    result = cli(["pull", "multi", "--ram-mib", "1000"], env)  # 800 MiB usable: Q8_0 uses 38%
    assert "quantisation Q8_0" in result.stdout and "plenty" in result.stdout
    assert result.returncode == 1  # the scripted Q8_0 file is not a model: verification refuses it


def test_tight_memory_picks_a_lower_quant(hub: HubServer, tmp_path: Path):
    env = {**catalogue(tmp_path), "HF_ENDPOINT": hub.url}
    result = cli(["pull", "multi", "--ram-mib", "250"], env)  # 200 MiB usable: Q4_K_M (241) does not fit
    assert "quantisation Q2_K" in result.stdout and "tight" in result.stdout


def test_an_explicit_quant_is_taken_as_given(hub: HubServer, tmp_path: Path):
    env = {**catalogue(tmp_path), "HF_ENDPOINT": hub.url}
    done = cli(["pull", "multi", "--quant", "Q4_K_M", "--ram-mib", "4000"], env)
    assert done.returncode == 0 and "quantisation" not in done.stdout
