"""Remote devices through llama.cpp's RPC backend (`rpc-server` on other machines).

llama-cpp-python has no parameter for RPC servers, so this registers them the way
llama.cpp's own `--rpc` does: ggml's backend registry finds the "RPC" backend, its proc
address `ggml_backend_rpc_add_server` makes one backend per server, and
`ggml_backend_register` adds its devices. llama.cpp then treats them as GPUs: with
`n_gpu_layers` set, a model's layers are split over them (RPC devices first, then local
GPUs: llama.cpp `llama_model_load_from_file`) in proportion to their free memory.

ggml aborts the whole process when an RPC server cannot be reached while it registers it,
so every endpoint is probed with a plain TCP connection first and an unreachable one is a
`BackendError` that names it. A link lost later, in the middle of a decode, still aborts
(ggml's RPC client has no error path there): run the server under a supervisor.
"""
from __future__ import annotations

import ctypes
import logging
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import llama_cpp.llama_cpp as ll

from localllm.engine.errors import BackendError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
"""How long a TCP connection to an rpc-server may take before it counts as unreachable."""

_ADD_SERVER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
_lock = threading.Lock()
_registered: dict[str, list[str]] = {}
"""endpoint -> names of its devices; registering twice would list its devices twice."""


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    name: str
    """ggml's device name, e.g. `RPC0[10.0.0.2:50052]` or `CPU`."""
    description: str
    free_bytes: int
    total_bytes: int
    endpoint: str = ""
    """The rpc-server it lives on; empty for local devices."""
    kind: int = 1
    """ggml_backend_dev_type: 0 CPU, 1 GPU (RPC devices too), 2 integrated GPU, 3 accelerator."""

    @property
    def label(self) -> str:
        return f"{self.name}@{self.endpoint}" if self.endpoint else self.name


def _ggml() -> ctypes.CDLL:
    """libllama's handle: dlsym on it also finds the ggml symbols of its dependencies."""
    lib = ll._lib  # noqa: SLF001 - the bindings' own CDLL; ggml's registry calls are not bound
    for name, restype, argtypes in (
        ("ggml_backend_reg_by_name", ctypes.c_void_p, [ctypes.c_char_p]),
        ("ggml_backend_reg_get_proc_address", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
        ("ggml_backend_register", None, [ctypes.c_void_p]),
        ("ggml_backend_reg_dev_count", ctypes.c_size_t, [ctypes.c_void_p]),
        ("ggml_backend_reg_dev_get", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t]),
        ("ggml_backend_dev_count", ctypes.c_size_t, []),
        ("ggml_backend_dev_get", ctypes.c_void_p, [ctypes.c_size_t]),
        ("ggml_backend_dev_name", ctypes.c_char_p, [ctypes.c_void_p]),
        ("ggml_backend_dev_description", ctypes.c_char_p, [ctypes.c_void_p]),
        ("ggml_backend_dev_type", ctypes.c_int, [ctypes.c_void_p]),
        ("ggml_backend_dev_memory", None, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                           ctypes.POINTER(ctypes.c_size_t)]),
    ):
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


def rpc_available() -> bool:
    """True when this llama.cpp build has the RPC backend (built with -DGGML_RPC=ON)."""
    return bool(_ggml().ggml_backend_reg_by_name(b"RPC"))


def parse_endpoints(text: str) -> tuple[str, ...]:
    """`HOST:PORT,HOST:PORT` -> endpoints; empty text -> ()."""
    endpoints = tuple(item.strip() for item in text.split(",") if item.strip())
    for endpoint in endpoints:
        host, sep, port = endpoint.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"RPC server {endpoint!r} must be HOST:PORT")
    return endpoints


def probe(endpoint: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raises BackendError unless a TCP connection to `endpoint` opens within `timeout_s`."""
    host, _, port = endpoint.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise BackendError(f"RPC server {endpoint} is unreachable ({exc}); check that rpc-server runs there "
                           f"and the network path to it") from None


def add_servers(endpoints: Sequence[str]) -> list[DeviceInfo]:
    """Registers each rpc-server's devices with ggml (once per endpoint per process) and
    returns the devices of `endpoints`. Changes process-wide state; all endpoints are probed
    before any is registered, so a failure registers nothing."""
    lib = _ggml()
    rpc_reg = lib.ggml_backend_reg_by_name(b"RPC")
    if not rpc_reg:
        raise BackendError("this llama.cpp was built without the RPC backend: rebuild llama-cpp-python with "
                           "CMAKE_ARGS=-DGGML_RPC=ON (docs/scaling.md)")
    address = lib.ggml_backend_reg_get_proc_address(rpc_reg, b"ggml_backend_rpc_add_server")
    if not address:
        raise BackendError("the RPC backend has no ggml_backend_rpc_add_server")
    add_server = _ADD_SERVER(address)
    with _lock:
        for endpoint in endpoints:
            if endpoint not in _registered:
                probe(endpoint)
        for endpoint in endpoints:
            if endpoint in _registered:
                continue
            reg = add_server(endpoint.encode())
            if not reg:
                raise BackendError(f"RPC server {endpoint} reported no devices")
            lib.ggml_backend_register(reg)
            _registered[endpoint] = [lib.ggml_backend_dev_name(lib.ggml_backend_reg_dev_get(reg, i)).decode()
                                     for i in range(lib.ggml_backend_reg_dev_count(reg))]
            log.info("rpc: %s registered: %s", endpoint, ", ".join(_registered[endpoint]))
        wanted = {name: endpoint for endpoint in endpoints for name in _registered[endpoint]}
    return [replace(device, endpoint=wanted[device.name]) for device in devices() if device.name in wanted]


def devices() -> list[DeviceInfo]:
    """Every device ggml knows now (CPU, GPUs, registered RPC servers) with its free memory."""
    lib = _ggml()
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append(DeviceInfo(lib.ggml_backend_dev_name(dev).decode(), lib.ggml_backend_dev_description(dev).decode(),
                                free.value, total.value, kind=lib.ggml_backend_dev_type(dev)))
    return found


GPU_KIND = 1


def offload_devices(rpc_devices: Sequence[DeviceInfo]) -> list[DeviceInfo]:
    """The devices llama.cpp spreads offloaded layers over, in its order: the RPC devices,
    then this machine's GPUs."""
    return [*rpc_devices, *(d for d in devices() if d.kind == GPU_KIND and not d.name.startswith("RPC"))]


def layer_split(rpc_devices: Sequence[DeviceInfo], num_layers: int, num_gpu_layers: int) -> dict[str, int]:
    """Layers per device as llama.cpp assigns them with the default tensor_split (proportional to
    the devices' free memory; llama-model.cpp `load_tensors`), over `rpc_devices` in order (see
    offload_devices). The output layer counts as layer `num_layers`, so the counts sum to
    num_layers + 1; what is not offloaded stays on the CPU."""
    num_gpu = num_layers + 1 if num_gpu_layers < 0 else num_gpu_layers
    first = max(num_layers + 1 - num_gpu, 0)
    active = min(num_gpu, num_layers + 1) if rpc_devices else 0
    split = {device.label: 0 for device in rpc_devices} | {"CPU": 0}
    total_free = sum(device.free_bytes for device in rpc_devices) or 1
    bounds, running = [], 0
    for device in rpc_devices:
        running += device.free_bytes
        bounds.append(running / total_free)
    for layer in range(num_layers + 1):
        if layer < first or layer - first >= active:
            split["CPU"] += 1
            continue
        position = (layer - first) / active
        index = next((i for i, bound in enumerate(bounds) if position < bound), len(bounds) - 1)
        split[rpc_devices[index].label] += 1
    return split
