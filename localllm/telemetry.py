"""Host telemetry for /v1/stats: CPU and RAM (psutil), GPUs (pynvml), this process's RSS."""
from __future__ import annotations

import logging
import threading

import psutil

log = logging.getLogger(__name__)


class GpuProbe:
    """NVML handles, opened once; when there is no NVIDIA driver it says so instead of failing."""

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
