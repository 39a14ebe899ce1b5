"""Host telemetry: CPU and RAM (psutil), GPUs (pynvml), this process's RSS, for /v1/stats; and
the free memory the memory plan starts from (`free_vram_bytes`, `free_ram_bytes`, which
models/probe.py re-exports). One NVML probe serves both."""
from __future__ import annotations

import logging
import threading

import psutil

log = logging.getLogger(__name__)


class GpuProbe:
    """NVML handles, opened once and kept; when there is no NVIDIA driver it says so instead of failing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: list | None = None
        self.status = "not probed"

    def _open(self) -> list:
        if self._handles is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
                self.status = "ok" if self._handles else "no NVIDIA GPU found"
            except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
                self._handles = []
                self.status = f"no NVIDIA GPU available ({type(exc).__name__})"
        return self._handles

    def free_bytes(self, device: int = 0) -> int:
        """Free memory of one NVIDIA GPU; 0 with no GPU, no driver or no pynvml. Never raises."""
        with self._lock:
            handles = self._open()
            if not 0 <= device < len(handles):
                return 0
            import pynvml

            try:
                return int(_memory_info(pynvml, handles[device]).free)
            except Exception as exc:  # a GPU that fell off the bus
                log.debug("cannot read GPU memory: %s", exc)
                return 0

    def snapshot(self) -> list[dict]:
        with self._lock:
            handles = self._open()
            if not handles:
                return []
            import pynvml

            gpus = []
            for index, handle in enumerate(handles):
                try:
                    memory = _memory_info(pynvml, handle)
                    name = pynvml.nvmlDeviceGetName(handle)
                    gpus.append({
                        "index": index,
                        "name": name.decode() if isinstance(name, bytes) else name,
                        "utilization_percent": pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
                        "memory_used_bytes": memory.used,
                        "memory_total_bytes": memory.total,
                    })
                except Exception as exc:  # a GPU that fell off the bus must not break /v1/stats
                    gpus.append({"index": index, "error": str(exc)})
            return gpus


def _memory_info(pynvml, handle):
    """NVML's v2 query, which matches nvidia-smi; v1 also counts reserved memory (~0.5 GiB on an H100)."""
    try:
        return pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
    except (AttributeError, TypeError, pynvml.NVMLError):
        return pynvml.nvmlDeviceGetMemoryInfo(handle)


_GPUS = GpuProbe()


def free_vram_bytes(device: int = 0) -> int:
    """Free memory of one NVIDIA GPU; 0 with no GPU, no driver or no pynvml."""
    return _GPUS.free_bytes(device)


def free_ram_bytes() -> int:
    """Memory available to a new process without swapping (psutil's `available`)."""
    return int(psutil.virtual_memory().available)


def host_snapshot() -> dict:
    """Cheap enough to call on every /v1/stats request."""
    memory = psutil.virtual_memory()
    gpus = _GPUS.snapshot()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count(),
        "ram_total_bytes": memory.total,
        "ram_available_bytes": memory.available,
        "process_rss_bytes": psutil.Process().memory_info().rss,
        "gpus": gpus,
        "gpu_status": _GPUS.status,
    }
