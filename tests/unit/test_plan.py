"""The memory plan with given free-memory figures: plenty, tight VRAM, no GPU."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from localllm.models.gguf import read_gguf
from localllm.models.plan import FLOOR_SLOT_CTX, GPU_CONTEXT_BYTES, MIB, ModelFacts, make_plan
from localllm.models.probe import free_ram_bytes, free_vram_bytes

GIB = 1024 * MIB


def facts(num_layers: int = 32, layer_mib: int = 100, kv_heads: int = 8, head_dim: int = 128,
          trained_ctx: int = 32768) -> ModelFacts:
    """A 3B-ish model: 32 x 100 MiB layers, 8 KV heads of 128 dims (128 KiB KV per token)."""
    return ModelFacts(num_layers, (layer_mib * MIB,) * num_layers, 400 * MIB, kv_heads, head_dim,
                      head_dim, trained_ctx, 3072, 128256)


def test_kv_bytes_follow_the_formula():
    f = facts()
    plan = make_plan(f, free_vram_bytes=80 * GIB, free_ram_bytes=64 * GIB, slots=4, ctx=16384)
    per_token = 2 * f.num_layers * f.num_kv_heads * f.key_length * 2  # K and V, f16
    assert plan.kv_type == "f16" and plan.kv_bytes == per_token * plan.ctx


def test_plenty_of_memory_takes_everything_asked():
    plan = make_plan(facts(), free_vram_bytes=24 * GIB, free_ram_bytes=32 * GIB, slots=4, ctx=16384)
    assert (plan.n_gpu_layers, plan.ctx, plan.slots, plan.kv_type) == (32, 16384, 4, "f16")
    assert plan.fits and plan.weights_cpu_bytes == 0
    assert "all layers fit on the GPU" in plan.explain()


def test_context_never_exceeds_the_trained_context():
    plan = make_plan(facts(trained_ctx=4096), free_vram_bytes=80 * GIB, free_ram_bytes=64 * GIB,
                     slots=2, ctx=65536)
    assert plan.slot_ctx == 4096 and plan.ctx == 8192
    assert any("trained" in note for note in plan.notes)


def test_tight_vram_quantises_kv_then_shrinks_context_before_layers():
    f = facts()
    weights = 32 * 100 * MIB + 400 * MIB
    # f16 KV for 4 x 8192 tokens is 4 GiB; q8_0 about 2.1 GiB: leave room for q8_0 only.
    q8 = make_plan(f, free_vram_bytes=weights + int(3.6 * GIB) + GPU_CONTEXT_BYTES, free_ram_bytes=32 * GIB, slots=4, ctx=32768)
    assert (q8.n_gpu_layers, q8.ctx, q8.kv_type) == (32, 32768, "q8_0") and q8.fits
    # Less VRAM: all layers stay, the context shrinks.
    short = make_plan(f, free_vram_bytes=weights + int(1.9 * GIB) + GPU_CONTEXT_BYTES, free_ram_bytes=32 * GIB, slots=4, ctx=32768)
    assert short.n_gpu_layers == 32 and FLOOR_SLOT_CTX <= short.slot_ctx < 8192 and short.fits
    # Much less: context at the floor, then layers leave the GPU.
    low = make_plan(f, free_vram_bytes=2 * GIB, free_ram_bytes=32 * GIB, slots=4, ctx=32768)
    assert 0 < low.n_gpu_layers < 32 and low.slot_ctx == FLOOR_SLOT_CTX and low.fits
    assert low.weights_gpu_bytes + low.kv_gpu_bytes + low.compute_bytes <= low.usable_vram_bytes
    assert low.weights_cpu_bytes > 0 and low.kv_cpu_bytes > 0


def test_no_gpu_plans_for_the_cpu_only():
    plan = make_plan(facts(), free_vram_bytes=0, free_ram_bytes=16 * GIB, slots=4, ctx=8192)
    assert plan.n_gpu_layers == 0 and plan.weights_gpu_bytes == 0 and plan.kv_gpu_bytes == 0
    assert plan.ctx == 8192 and plan.kv_type == "f16" and plan.fits
    assert "no usable GPU memory" in plan.explain()


def test_too_little_ram_says_so():
    plan = make_plan(facts(), free_vram_bytes=0, free_ram_bytes=1 * GIB, slots=1, ctx=4096)
    assert not plan.fits and "does not fit" in plan.explain()


def test_json_carries_the_plan():
    plan = make_plan(facts(), free_vram_bytes=0, free_ram_bytes=16 * GIB)
    doc = json.loads(plan.to_json())
    assert doc["n_gpu_layers"] == 0 and doc["ctx"] == plan.ctx and doc["kv_type"] == "f16"
    assert doc["slot_ctx"] == plan.slot_ctx and isinstance(doc["notes"], list)


def test_bad_request_is_refused():
    with pytest.raises(ValueError):
        make_plan(facts(), free_vram_bytes=0, free_ram_bytes=GIB, slots=0)


def test_facts_from_the_bundled_gguf(model_path: Path):
    f = ModelFacts.from_gguf(read_gguf(model_path))
    assert (f.num_layers, f.num_kv_heads, f.key_length, f.trained_ctx, f.sliding_window) == (18, 1, 256, 32768, 512)
    assert f.kv_bytes_per_token_layer("f16") == 2 * 1 * 256 * 2  # K and V, one head of 256, f16
    plan = make_plan(f, free_vram_bytes=0, free_ram_bytes=8 * GIB, slots=4, ctx=8192)
    assert plan.kv_bytes == 18 * 1024 * 8192 and any("swa_full" in n for n in plan.notes)


def test_probes_never_fail():
    assert free_vram_bytes() >= 0  # 0 here: no GPU, no driver
    assert free_ram_bytes() > 0
