"""`swa_full = false`: Gemma 3's sliding-window layers get a window-sized KV cache. A cached
prefix is reused only while its last window is still cached; otherwise the prompt runs cold
(llama.cpp itself would attend over the missing cells without a word). Output stays correct."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from localllm.engine.async_engine import AsyncEngine
from localllm.engine.llama_backend import BackendConfig, LlamaBackend
from localllm.types import SamplingParams

pytestmark = pytest.mark.integration

NUM_SLOTS = 1
CTX = 4096  # one sequence: llama.cpp sizes the sliding-window cache at 512 + 512 = 1,024 cells
GREEDY = SamplingParams(temperature=0.0, max_tokens=6)
LOGIT_MARGIN = 1.5  # as tests/integration/test_engine.py: batched kernels are not batch-invariant
RULES = [f"Rule {i}: answer briefly." for i in range(150)]
PREAMBLE = "You are a careful assistant. " + " ".join(RULES)


@pytest.fixture(scope="module")
async def engine(model_path: Path):
    backend = LlamaBackend(BackendConfig(model_path, CTX, NUM_SLOTS, 512, 2, swa_full=False))
    engine = AsyncEngine(backend, model_name="gemma3-270m", num_slots=NUM_SLOTS, slot_ctx=CTX // NUM_SLOTS,
                         num_batch_tokens=512, num_kv_cells_total=CTX)
    await engine.start()
    yield engine
    await engine.stop()


async def generate(engine: AsyncEngine, prompt) -> tuple[list[int], int]:
    """(generated token ids, prompt tokens reused from the cache)."""
    deltas = [d async for d in engine.generate(prompt, GREEDY)]
    return [t for d in deltas for t in d.token_ids], deltas[-1].num_cached_tokens


def assert_near_best(scorer: LlamaBackend, prompt_ids: list[int], generated: list[int]) -> None:
    logits = scorer.logits_for(prompt_ids + generated[:-1])
    for step, token in enumerate(generated):
        row = logits[len(prompt_ids) - 1 + step]
        assert row[token] >= row.max() - LOGIT_MARGIN, (step, float(row[token]), float(row.max()),
                                                         int(np.argmax(row)))


async def test_a_prefix_whose_window_is_gone_runs_cold_and_correct(engine: AsyncEngine, scorer: LlamaBackend):
    first = engine.tokenize(PREAMBLE + " Question: what is two plus two?")
    half = "You are a careful assistant. " + " ".join(RULES[:75])
    second = engine.tokenize(half + " Question: name a colour.")
    shared = len(engine.tokenize(half))
    # The slot keeps the last 1,024 positions of `first` (~1,270 tokens), so the 512 positions
    # before `shared` (~630) that the sliding window needs there are gone.
    assert len(first) > 1024 + 200 and 512 < shared < len(first) - 1024 + 512
    await generate(engine, first)
    generated, reused = await generate(engine, second)
    assert reused == 0  # a full-size cache reuses ~shared tokens here (test_engine.py)
    assert_near_best(scorer, second, generated)


async def test_a_long_shared_prefix_still_in_the_window_is_reused(engine: AsyncEngine, scorer: LlamaBackend):
    first = engine.tokenize(PREAMBLE + " Question: what is two plus two?")
    second = engine.tokenize(PREAMBLE + " Question: name a colour.")
    await generate(engine, first)
    generated, reused = await generate(engine, second)
    assert reused >= len(engine.tokenize(PREAMBLE)) - 2  # the last window before the fork is cached
    assert_near_best(scorer, second, generated)


async def test_continuing_where_the_cache_ends_still_reuses_it(engine: AsyncEngine, scorer: LlamaBackend):
    prompt = engine.tokenize(PREAMBLE + " Question: which planet is largest?")
    generated, _ = await generate(engine, prompt)
    follow_up = prompt + generated + engine.tokenize(" And the smallest?", add_special=False)
    more, reused = await generate(engine, follow_up)
    assert reused >= len(prompt) + len(generated) - 1  # everything the slot had decoded
    assert_near_best(scorer, follow_up, more)


async def test_short_prefixes_inside_the_window_are_reused(engine: AsyncEngine):
    base = "Name three fruits that are red:"
    await generate(engine, base + " apples,")
    _, reused = await generate(engine, base + " cherries,")
    assert reused >= len(engine.tokenize(base)) - 2
