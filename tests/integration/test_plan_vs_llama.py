"""The memory plan's estimates against what llama.cpp itself reports allocating."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from localllm.engine.llama_backend import BackendConfig, LlamaBackend
from localllm.models.gguf import read_gguf
from localllm.models.plan import ModelFacts, make_plan

pytestmark = pytest.mark.integration
MIB = 2**20


def reported_mib(lines: list[str], what: str) -> float:
    pattern = re.compile(rf"{what} buffer size =\s+([0-9.]+) MiB")
    return sum(float(m.group(1)) for line in lines for m in [pattern.search(line)] if m)


def test_plan_matches_llama_cpp_allocations(model_path: Path, caplog: pytest.LogCaptureFixture):
    ctx, slots, batch = 8192, 4, 512
    plan = make_plan(ModelFacts.from_gguf(read_gguf(model_path)), free_vram_bytes=0, free_ram_bytes=16 * 2**30,
                     slots=slots, ctx=ctx, num_batch=batch)
    caplog.set_level(logging.DEBUG, logger="localllm.engine.llama_backend.backend")
    backend = LlamaBackend(BackendConfig(model_path, ctx, slots, batch, 2))
    backend.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("llama.cpp:")]
    kv_mib = reported_mib(lines, "KV")
    weights_mib = reported_mib(lines, "CPU_Mapped model")
    compute_mib = reported_mib(lines, "compute")
    assert kv_mib > 0 and weights_mib > 0 and compute_mib > 0, "llama.cpp's buffer lines were not seen"
    assert plan.kv_bytes / MIB == pytest.approx(kv_mib, rel=0.01)
    assert (plan.weights_cpu_bytes + plan.weights_gpu_bytes) / MIB == pytest.approx(weights_mib, rel=0.02)
    assert plan.compute_bytes / MIB == pytest.approx(compute_mib, rel=0.25)  # an estimate, erring high
    assert plan.compute_bytes / MIB >= compute_mib
