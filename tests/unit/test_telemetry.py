"""One GPU probe: the memory plan's free VRAM and /v1/stats read the same NVML handles."""
from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from localllm import telemetry
from localllm.models import probe


def fake_nvml(free: list[int], total: int = 80 << 30, fail_init: bool = False) -> types.ModuleType:
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = type("NVMLError", (Exception,), {})
    nvml.nvmlMemory_v2 = 2
    nvml.num_inits = 0

    def init():
        nvml.num_inits += 1
        if fail_init:
            raise nvml.NVMLError("driver not loaded")

    nvml.nvmlInit = init
    nvml.nvmlDeviceGetCount = lambda: len(free)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetMemoryInfo = lambda h, version=None: SimpleNamespace(free=free[h], used=total - free[h], total=total)
    nvml.nvmlDeviceGetName = lambda h: b"Fake GPU"
    nvml.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=7)
    return nvml


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch):
    def install(nvml: types.ModuleType) -> telemetry.GpuProbe:
        monkeypatch.setitem(sys.modules, "pynvml", nvml)
        fresh = telemetry.GpuProbe()
        monkeypatch.setattr(telemetry, "_GPUS", fresh)
        return fresh
    return install


def test_plan_and_stats_read_one_probe(gpus):
    nvml = fake_nvml([30 << 30, 50 << 30])
    probe_in_use = gpus(nvml)
    assert probe.free_vram_bytes() == 30 << 30 and probe.free_vram_bytes(1) == 50 << 30
    assert probe.free_vram_bytes(2) == 0  # no such device
    snapshot = telemetry.host_snapshot()
    assert [g["memory_used_bytes"] for g in snapshot["gpus"]] == [50 << 30, 30 << 30]
    assert snapshot["gpu_status"] == probe_in_use.status == "ok"
    assert nvml.num_inits == 1  # opened once, for both


def test_no_driver_means_zero_free_vram_and_a_status_that_says_so(gpus):
    gpus(fake_nvml([30 << 30], fail_init=True))
    assert probe.free_vram_bytes() == 0
    snapshot = telemetry.host_snapshot()
    assert snapshot["gpus"] == [] and "no NVIDIA GPU" in snapshot["gpu_status"]
