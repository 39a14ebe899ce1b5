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
