"""Prefix states (KV states saved on disk): saved by one engine, restored by the next, same greedy output."""
from __future__ import annotations

from pathlib import Path

import pytest

from localllm.config import Config
from localllm.engine.llama_backend import BackendConfig, LlamaBackend
from localllm.compose import engine_for
from localllm.types import SamplingParams

pytestmark = pytest.mark.integration
PREAMBLE = "You are a terse assistant for a hardware shop. " + " ".join(
    f"Policy {i}: items must be returned within {i + 10} days with a receipt." for i in range(40))
GREEDY = SamplingParams(temperature=0.0, max_tokens=8)


async def run_once(model_path: Path, cache_dir: Path, min_tokens: int, prompt: str):
    config = Config.from_flat({"parallel": 2, "ctx": 4096, "threads": 2, "cache_dir": str(cache_dir),
                               "kv_cache_min_tokens": min_tokens})
    backend = LlamaBackend(BackendConfig(model_path, 4096, 2, 512, 2))
    engine = engine_for(backend, "gemma3-270m", config, identity="test-model")
    await engine.start()
    try:
        deltas = [d async for d in engine.generate(prompt, GREEDY)]
        return [t for d in deltas for t in d.token_ids], deltas[-1].num_cached_tokens, engine.stats(), \
            len(engine.tokenize(prompt))
    finally:
        await engine.stop()  # waits for the state write


async def test_saved_prefix_survives_a_restart_and_gives_the_cold_output(model_path: Path, tmp_path: Path):
    first = PREAMBLE + "\nQuestion: can I return a hammer after 12 days?\nAnswer:"
    second = PREAMBLE + "\nQuestion: do I need a receipt?\nAnswer:"
    cache_dir = tmp_path / "cache"
    _, cached, _, _ = await run_once(model_path, cache_dir, 256, first)  # cold; saves its state
    assert cached == 0
    assert any((cache_dir / "kv").iterdir())
    restored_ids, restored_cached, stats, num_prompt = await run_once(model_path, cache_dir, 256, second)
    cold_ids, cold_cached, _, _ = await run_once(model_path, tmp_path / "no-cache", 0, second)
    shared = len(PREAMBLE) // 8  # a lower bound on the preamble's tokens
    assert num_prompt > 500 and restored_cached > shared and cold_cached == 0
    assert stats.num_prompt_tokens_total == num_prompt - restored_cached  # only the tail was evaluated
    assert restored_ids == cold_ids


async def test_a_state_from_another_model_or_layout_is_never_used(model_path: Path, tmp_path: Path):
    prompt = PREAMBLE + "\nQuestion: hi\nAnswer:"
    await run_once(model_path, tmp_path, 256, prompt)
    config = Config.from_flat({"parallel": 2, "ctx": 4096, "threads": 2, "cache_dir": str(tmp_path),
                               "kv_cache_min_tokens": 256})
    backend = LlamaBackend(BackendConfig(model_path, 4096, 2, 512, 2))
    engine = engine_for(backend, "gemma3-270m", config, identity="another-model")
    await engine.start()
    try:
        deltas = [d async for d in engine.generate(prompt, GREEDY)]
        assert deltas[-1].num_cached_tokens == 0
    finally:
        await engine.stop()
