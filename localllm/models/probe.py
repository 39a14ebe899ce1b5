"""Free memory right now: GPU (pynvml) and RAM (psutil). Never raises for a missing GPU."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def free_vram_bytes(device: int = 0) -> int:
    """Free memory of one NVIDIA GPU; 0 with no GPU, no driver or no pynvml."""
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError has many subclasses (driver not loaded, library not found)
        log.debug("no NVIDIA GPU: %s", exc)
        return 0
    try:
        if pynvml.nvmlDeviceGetCount() <= device:
            return 0
        handle = pynvml.nvmlDeviceGetHandleByIndex(device)
        from localllm.telemetry import _memory_info

        return int(_memory_info(pynvml, handle).free)
    except Exception as exc:
        log.debug("cannot read GPU memory: %s", exc)
        return 0
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def free_ram_bytes() -> int:
    """Memory available to a new process without swapping (psutil's `available`)."""
    import psutil
    return int(psutil.virtual_memory().available)
