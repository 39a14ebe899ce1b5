"""`pull NAME` with no --quant picks the quantisation by the memory at hand, and says why.

Unit figures: the published file sizes of an 8B model's quants. End to end: a loopback
hub serves one real GGUF (the bundled model) under the quant that should win and sparse
stubs of other sizes under the rest; the memory comes from pull's hidden --ram-mib /
--vram-mib (CLI) or auto_quant's free_*_bytes (Python API).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localllm.models.gguf import read_gguf
from localllm.models.hub import auto_quant, pull, quant_sizes, target_for
from localllm.models.plan import GPU_CONTEXT_BYTES, ModelFacts
from localllm.models.quant_choice import (
    GIB, MIB, NothingFits, choose_for, choose_quant, runtime_bytes, weights_budgets,
)
from localllm.models.registry import load_catalogue
from localllm.models.store import ModelStore
from tests.models.hub_server import HubServer
from tests.models.test_hub import cli

SIZES_8B = {"Q2_K": int(3.18 * GIB), "Q3_K_M": int(4.02 * GIB), "Q4_K_M": int(4.92 * GIB),
            "Q5_K_M": int(5.73 * GIB), "Q6_K": int(6.60 * GIB), "Q8_0": int(8.54 * GIB),
            "F16": int(16.1 * GIB)}
REPO = "test-org/multi-quant"
QUANTS = ("Q2_K", "Q4_K_M", "Q6_K", "Q8_0")


# --- the rule, with given figures -------------------------------------------------------------

def test_plenty_of_ram_without_a_gpu_takes_q8_0_and_says_how_much_it_uses():
    budgets = weights_budgets(free_vram_bytes=0, free_ram_bytes=32 * GIB)
    assert [b.memory for b in budgets] == ["RAM"]
    # 32 GiB less the plan's 10% margin = 28.8 GiB, less a fifth for KV and compute = 23.0 GiB.
    assert budgets[0].usable_bytes == pytest.approx(23.04 * GIB, rel=1e-3)
    quant, reason = choose_for(SIZES_8B, budgets)
    assert quant == "Q8_0"
    assert reason.startswith("Q8_0: 8.5 GiB uses 37% of 23.0 GiB usable RAM (plenty")
    assert "a fifth" in reason


def test_the_default_when_a_higher_quant_would_use_over_half():
    quant, reason = choose_quant(SIZES_8B, 10 * GIB, "RAM")
    assert quant == "Q4_K_M" and "the default" in reason and "10.0 GiB usable RAM" in reason
    assert choose_quant(SIZES_8B, 14 * GIB)[0] == "Q6_K"  # 6.6 <= 7 but 8.54 > 7
    assert choose_quant(SIZES_8B, 12 * GIB)[0] == "Q5_K_M"


def test_tight_vram_takes_the_largest_lower_quant_that_fits():
    budgets = weights_budgets(free_vram_bytes=6 * GIB + GPU_CONTEXT_BYTES, free_ram_bytes=64 * GIB)
    assert budgets[0].memory == "VRAM"  # with a GPU the weights go there first
    # 6.5 GiB - 5% - 0.5 GiB for the GPU context = 5.675, less a fifth = 4.54 GiB
    quant, reason = choose_for(SIZES_8B, budgets)
    assert quant == "Q3_K_M"
    assert "Q4_K_M (4.9 GiB) does not fit 4.5 GiB usable VRAM" in reason and "tight" in reason


def test_a_gpu_too_small_for_any_file_splits_the_weights_with_ram():
    quant, reason = choose_for(SIZES_8B, weights_budgets(free_vram_bytes=GIB, free_ram_bytes=16 * GIB))
    assert quant == "Q5_K_M" and "usable VRAM+RAM" in reason  # (0.75 + 14.4) * 0.8 = 12.1 GiB


def test_nothing_fits_is_refused_with_the_figures():
    with pytest.raises(NothingFits, match=r"no offered quantisation fits 2\.0 GiB usable RAM "
                                          r"\(smallest: Q2_K, 3\.2 GiB\)"):
        choose_quant(SIZES_8B, 2 * GIB, "RAM")
    with pytest.raises(NothingFits, match="usable RAM"):
        choose_for(SIZES_8B, weights_budgets(free_vram_bytes=0, free_ram_bytes=GIB))


def test_full_precision_is_never_taken_while_a_quantised_file_is_offered():
    assert choose_quant({"Q8_0": 8 * GIB, "F16": 16 * GIB}, 12 * GIB)[0] == "Q8_0"  # Q4_K_M not offered
    assert choose_quant({"F16": 2 * GIB, "BF16": 2 * GIB + 1}, 12 * GIB)[0] == "F16"
    quant, reason = choose_quant({"IQ3_M": 3 * GIB, "Q4_K_M": 5 * GIB, "IQ2_XS": 2 * GIB}, 4 * GIB)
    assert quant == "IQ3_M" and "tight" in reason


def test_kv_and_compute_room_comes_from_the_plan_arithmetic_when_a_gguf_is_at_hand(model_path: Path):
    facts = ModelFacts.from_gguf(read_gguf(model_path))
    room = runtime_bytes(facts, slots=4, ctx=8192, num_batch=512)
    # Gemma 3 270M: 18 layers x 1 KV head x (256 + 256) x 2 bytes x 8192 cells = 144 MiB of f16 KV.
    assert room > 144 * MIB
    [budget] = weights_budgets(free_vram_bytes=0, free_ram_bytes=4 * GIB, facts=facts)
    assert budget.runtime_bytes == room and budget.usable_bytes == 4 * GIB - 512 * MIB - room
    assert "at ctx 8192" in budget.runtime_note


# --- end to end against a loopback hub --------------------------------------------------------

def serve(tmp_path: Path, model_path: Path, winner: str, stub_mib: dict[str, int]) -> HubServer:
    """The bundled GGUF as `winner`, sparse files of the given sizes as the other quants."""
    server = HubServer()
    server.state.add(REPO, f"m-{winner}.gguf", model_path, load_catalogue()["gemma3-270m"].sha256)
    for quant, mib in stub_mib.items():
        stub = tmp_path / f"stub-{quant}.gguf"
        with stub.open("wb") as f:
            f.truncate(mib * MIB)
        server.state.add(REPO, f"m-{quant}.gguf", stub, f"{len(stub_mib):064x}")
    return server


@pytest.fixture()
def multi_dir(tmp_path: Path) -> Path:
    files = "".join(f'{q} = "m-{q}.gguf"\n' for q in QUANTS)
    (tmp_path / "models.toml").write_text(
        f'[models.multi]\nhf_repo = "{REPO}"\nquant = "Q4_K_M"\n[models.multi.files]\n{files}')
    return tmp_path


@pytest.fixture()
def default_hub(tmp_path: Path, model_path: Path) -> Iterator[HubServer]:
    """Q4_K_M is the real 241 MiB model; Q8_0 500, Q6_K 400, Q2_K 150 MiB stubs."""
    with serve(tmp_path, model_path, "Q4_K_M", {"Q8_0": 500, "Q6_K": 400, "Q2_K": 150}) as server:
        yield server


def test_sizes_come_from_head_requests_to_the_endpoint(default_hub: HubServer, multi_dir: Path):
    spec = load_catalogue(multi_dir / "models.toml")["multi"]
    sizes = quant_sizes(spec, default_hub.url)
    assert sizes["Q8_0"] == 500 * MIB and sizes["Q2_K"] == 150 * MIB and sizes["Q4_K_M"] > 240 * MIB
    assert {m for m, path, _ in default_hub.state.requests if "/resolve/" in path} == {"HEAD"}


def test_cli_pull_default_when_higher_quants_would_use_over_half(default_hub: HubServer, multi_dir: Path):
    env = {"LOCALLLM_DATA_DIR": str(multi_dir), "HF_ENDPOINT": default_hub.url}
    # 1,112 MiB free: less 512 margin = 600, less a fifth = 480 MiB for the weights; Q6_K (400) > 240.
    done = cli(["pull", "multi", "--ram-mib", "1112"], env)
    assert done.returncode == 0, done.stderr
    assert "quantisation Q4_K_M: 241 MiB fits 480 MiB usable RAM (the default" in done.stdout
    assert "multi Q4_K_M:" in done.stdout and "verified" in done.stdout


def test_cli_pull_with_plenty_of_memory_takes_the_higher_quant(tmp_path: Path, model_path: Path,
                                                               multi_dir: Path):
    with serve(tmp_path, model_path, "Q8_0", {"Q6_K": 200, "Q4_K_M": 150, "Q2_K": 90}) as hub:
        env = {"LOCALLLM_DATA_DIR": str(multi_dir), "HF_ENDPOINT": hub.url}
        done = cli(["pull", "multi", "--ram-mib", "1262"], env)  # 750 less a fifth: 600 MiB usable
        assert done.returncode == 0, done.stderr
        assert "quantisation Q8_0: 241 MiB uses 40% of 600 MiB usable RAM (plenty" in done.stdout
        assert "multi Q8_0:" in done.stdout


def test_cli_pull_with_tight_vram_takes_a_lower_quant(tmp_path: Path, model_path: Path, multi_dir: Path):
    with serve(tmp_path, model_path, "Q2_K", {"Q8_0": 900, "Q6_K": 700, "Q4_K_M": 400}) as hub:
        env = {"LOCALLLM_DATA_DIR": str(multi_dir), "HF_ENDPOINT": hub.url}
        # 1,212 MiB VRAM: less 256 and 512 for the GPU context = 444, less a fifth = 355 MiB;
        # Q4_K_M (400) does not fit.
        done = cli(["pull", "multi", "--vram-mib", "1212", "--ram-mib", "64000"], env)
        assert done.returncode == 0, done.stderr
        assert "quantisation Q2_K: Q4_K_M (400 MiB) does not fit 355 MiB usable VRAM" in done.stdout
        assert "tight" in done.stdout and "multi Q2_K:" in done.stdout


def test_cli_pull_refuses_when_nothing_fits_and_offline_takes_the_default(default_hub: HubServer,
                                                                          multi_dir: Path):
    env = {"LOCALLLM_DATA_DIR": str(multi_dir), "HF_ENDPOINT": default_hub.url}
    refused = cli(["pull", "multi", "--ram-mib", "600"], env)  # 88 MiB less a fifth: not even Q2_K
    assert refused.returncode == 1 and "no offered quantisation fits 70 MiB usable RAM" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not [r for r in default_hub.state.requests if r[0] == "GET" and "/resolve/" in r[1]]
    offline = cli(["pull", "multi", "--offline", "--ram-mib", "600"], env)
    assert "quantisation Q4_K_M: offline" in offline.stdout and "catalogue's default" in offline.stdout
    assert offline.returncode == 1 and "offline" in offline.stderr  # nothing cached to fall back on


def test_cli_explicit_quant_is_taken_as_given(default_hub: HubServer, multi_dir: Path):
    env = {"LOCALLLM_DATA_DIR": str(multi_dir), "HF_ENDPOINT": default_hub.url}
    done = cli(["pull", "multi", "--quant", "Q4_K_M", "--ram-mib", "600"], env)
    assert done.returncode == 0, done.stderr
    assert "quantisation" not in done.stdout and "multi Q4_K_M:" in done.stdout
    unknown = cli(["pull", "multi", "--quant", "Q5_K_M"], env)
    assert unknown.returncode == 2 and "has no Q5_K_M file" in unknown.stderr


def test_python_api_with_facts_from_a_local_gguf(tmp_path: Path, model_path: Path, multi_dir: Path):
    facts = ModelFacts.from_gguf(read_gguf(model_path))
    room = runtime_bytes(facts, slots=4, ctx=8192, num_batch=512)
    store = ModelStore(multi_dir, load_catalogue(multi_dir / "models.toml"))
    with serve(tmp_path, model_path, "Q6_K", {"Q8_0": 600, "Q4_K_M": 150, "Q2_K": 90}) as hub:
        # 500 MiB for the weights after the margin and the measured KV/compute room:
        # Q8_0 (600) does not fit twice, Q6_K (241) does.
        quant, reason = auto_quant(store.catalogue["multi"], free_vram_bytes=0,
                                   free_ram_bytes=512 * MIB + room + 500 * MIB, facts=facts,
                                   endpoint=hub.url)
        assert quant == "Q6_K" and "48% of 500 MiB usable RAM" in reason and "at ctx 8192" in reason
        record = pull(store, target_for("multi", store.catalogue, quant), endpoint=hub.url)
    assert record.quant == "Q6_K" and store.resolve("multi:Q6_K")[0] == Path(record.path)
