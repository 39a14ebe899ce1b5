"""--rpc without machines: the layer split arithmetic, config checks, and a clear error on a build without RPC."""
from __future__ import annotations

import pytest

from localllm.config import ConfigError, EngineConfig
from localllm.engine.errors import BackendError
from localllm.engine.llama_backend import rpc

GIB = 2**30


def device(n: int, free_gib: float) -> rpc.DeviceInfo:
    return rpc.DeviceInfo(f"RPC{n}", "remote CPU", int(free_gib * GIB), int(free_gib * GIB), f"10.0.0.{n}:50052")


def test_equal_free_memory_splits_layers_evenly_output_layer_included():
    # llama.cpp's own assignment for the bundled model (18 layers + output) was RPC0 10, RPC1 9
    assert rpc.layer_split([device(0, 8), device(1, 8)], 18, -1) == {
        "RPC0@10.0.0.0:50052": 10, "RPC1@10.0.0.1:50052": 9, "CPU": 0}


def test_split_follows_free_memory_and_partial_offload_keeps_the_first_layers_on_the_cpu():
    split = rpc.layer_split([device(0, 3), device(1, 1)], 18, -1)
    assert split == {"RPC0@10.0.0.0:50052": 15, "RPC1@10.0.0.1:50052": 4, "CPU": 0}
    split = rpc.layer_split([device(0, 1), device(1, 1)], 18, 9)
    assert split["CPU"] == 10 and sum(split.values()) == 19


def test_rpc_config_is_a_host_port_list():
    assert EngineConfig().rpc_servers == ()
    assert EngineConfig(rpc=" 10.0.0.1:50052,box:1 ").rpc_servers == ("10.0.0.1:50052", "box:1")
    for bad in ("10.0.0.1", "box:port", ":50052", "box:0"):
        with pytest.raises(ConfigError, match="rpc"):
            EngineConfig(rpc=bad)


def test_unreachable_server_is_a_named_error_not_an_abort():
    if not rpc.rpc_available():
        pytest.skip("llama_cpp was built without the RPC backend")
    with pytest.raises(BackendError, match=r"RPC server 127.0.0.1:1 is unreachable"):
        rpc.add_servers(["127.0.0.1:1"])


def test_a_build_without_rpc_says_how_to_get_it():
    if rpc.rpc_available():
        pytest.skip("this llama_cpp has the RPC backend")
    with pytest.raises(BackendError, match="GGML_RPC=ON"):
        rpc.add_servers(["127.0.0.1:50052"])


@pytest.fixture
def two_remote_devices(monkeypatch: pytest.MonkeyPatch):
    """rpc-servers as ggml would report them, without the machines (tests/rpc/test_rpc_split.py has those)."""
    found: list[rpc.DeviceInfo] = []
    monkeypatch.setattr(rpc, "add_servers", lambda endpoints: found)
    monkeypatch.setattr(rpc, "offload_devices", lambda rpc_devices: list(rpc_devices))
    monkeypatch.setattr("localllm.models.probe.free_vram_bytes", lambda device=0: 0)
    return found


def plan_for(model_path, devices, found):
    from localllm.config import Config
    from localllm.compose import serving_plan

    found[:] = devices
    config = Config.from_flat({"rpc": ",".join(d.endpoint for d in devices), "parallel": 1, "ctx": 1024})
    return serving_plan(config, model_path)


def test_the_plan_counts_remote_free_memory_and_splits_by_it(model_path, two_remote_devices):
    offload = plan_for(model_path, [device(0, 3), device(1, 1)], two_remote_devices)
    assert offload.n_gpu_layers == -1  # 4 GiB of remote memory holds the whole 270M model
    assert offload.layer_split == {"RPC0@10.0.0.0:50052": 15, "RPC1@10.0.0.1:50052": 4, "CPU": 0}
    body = offload.to_dict()
    assert body["layer_split"] == offload.layer_split and [d["name"] for d in body["devices"]] == list(
        offload.layer_split)[:2]
    assert "RPC0@10.0.0.0:50052 15" in offload.explain()


def test_too_little_remote_memory_keeps_layers_on_the_cpu(model_path, two_remote_devices):
    # 0.75 + 0.75 GiB, less the margin and the GPU context reserve: ~770 MiB for the compute buffer
    # (~570 MiB: logits for 512 tokens x 262k), the KV cache and as many layers as fit
    offload = plan_for(model_path, [device(0, 0.75), device(1, 0.75)], two_remote_devices)
    assert 0 < offload.plan.n_gpu_layers < 18
    assert offload.layer_split["CPU"] == 19 - offload.plan.n_gpu_layers
    assert sum(offload.layer_split.values()) == 19
