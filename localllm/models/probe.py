"""Free memory right now, for the memory plan: GPU (pynvml) and RAM (psutil). Never raises for
a missing GPU. The one implementation is in telemetry.py (its NVML probe also feeds /v1/stats);
callers and tests use these names here."""
from __future__ import annotations

from localllm.telemetry import free_ram_bytes, free_vram_bytes

__all__ = ["free_ram_bytes", "free_vram_bytes"]
