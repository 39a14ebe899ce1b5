"""The engine on the real bundled model: determinism, isolation, prefix reuse, abort, UTF-8."""
from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from localllm.config import Config
from localllm.engine.async_engine import AsyncEngine
from localllm.engine.llama_backend import BackendConfig, LlamaBackend
from localllm.compose import engine_for
from localllm.types import EngineStats, FinishReason, PromptTooLong, SamplingParams, TokenDelta

pytestmark = pytest.mark.integration

NUM_SLOTS = 8
CTX = 16384  # 2,048 tokens per slot
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)
# llama.cpp's batched kernels are not batch-invariant: a token chosen inside a batch
# may trail the solo run's best by a little (up to ~1.2 logits measured here).
LOGIT_MARGIN = 1.5


@pytest.fixture(scope="module")
async def engine(model_path: Path, data_dir: Path):
    config = Config.from_flat({"parallel": NUM_SLOTS, "ctx": CTX, "threads": 2, "data_dir": str(data_dir)})
    backend = LlamaBackend(BackendConfig(model_path, CTX, NUM_SLOTS, 512, 2))
    engine = engine_for(backend, "gemma3-270m", config)
    await engine.start()
    yield engine
    await engine.stop()


async def collect(engine: AsyncEngine, prompt, params: SamplingParams = GREEDY) -> list[TokenDelta]:
    return [d async for d in engine.generate(prompt, params)]


def tokens_of(deltas: list[TokenDelta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def text_of(deltas: list[TokenDelta]) -> str:
    return "".join(d.text for d in deltas)


async def wait_idle(engine: AsyncEngine, also=lambda stats: True, timeout_s: float = 10.0) -> EngineStats:
    """Polls stats until no slot is busy and `also(stats)` holds."""
    for _ in range(int(timeout_s / 0.02)):
        stats = engine.stats()
        if stats.num_busy_slots == 0 and stats.num_waiting == 0 and also(stats):
            return stats
        await asyncio.sleep(0.02)
    raise AssertionError("engine did not become idle")


async def test_greedy_output_is_deterministic_alone(engine: AsyncEngine):
    prompt = "The three primary colours are"
    first = await collect(engine, prompt)
    second = await collect(engine, prompt)
    assert tokens_of(first) == tokens_of(second)
    assert text_of(first) and text_of(first) == text_of(second)
    assert first[-1].finish_reason in (FinishReason.LENGTH, FinishReason.STOP)


async def test_batched_requests_stay_isolated(engine: AsyncEngine, scorer: LlamaBackend):
    topics = ["the ocean", "a violin", "Mount Everest", "bread baking", "the Moon",
              "chess openings", "honey bees", "the Roman empire"]
    prompts = [f"Here is a short paragraph about {t}:" for t in topics]
    results = await asyncio.gather(*(collect(engine, p) for p in prompts))
    assert len({tuple(tokens_of(r)) for r in results}) > 1  # different prompts, different text
    for prompt, deltas in zip(prompts, results):
        prompt_ids = engine.tokenize(prompt)
        generated = tokens_of(deltas)
        assert generated
        logits = scorer.logits_for(prompt_ids + generated[:-1])
        for step, token in enumerate(generated):
            row = logits[len(prompt_ids) - 1 + step]
            assert row[token] >= row.max() - LOGIT_MARGIN, (
                f"{prompt!r}: token {step} scored {row[token]:.2f}, best {row.max():.2f} "
                f"(token {int(np.argmax(row))}): another sequence leaked into this one"
            )


async def test_shared_prefix_evaluates_only_the_remainder(engine: AsyncEngine):
    preamble = "You are a careful assistant. " + " ".join(f"Rule {i}: answer briefly." for i in range(150))
    first_prompt = preamble + " Question: what is two plus two?"
    second_prompt = preamble + " Question: name a colour."
    first = await collect(engine, first_prompt, SamplingParams(temperature=0.0, max_tokens=4))
    before = engine.stats()
    second = await collect(engine, second_prompt, SamplingParams(temperature=0.0, max_tokens=4))
    after = engine.stats()
    num_prompt = len(engine.tokenize(second_prompt))
    shared = len(engine.tokenize(preamble))
    assert num_prompt > 1000
    assert first[-1].num_cached_tokens < 50  # nothing like it was cached before
    assert second[-1].num_cached_tokens >= shared - 2
    evaluated = after.num_prompt_tokens_total - before.num_prompt_tokens_total
    assert evaluated == num_prompt - second[-1].num_cached_tokens
    assert after.num_reused_tokens_total - before.num_reused_tokens_total == second[-1].num_cached_tokens


async def test_abort_mid_stream_frees_the_slot(engine: AsyncEngine):
    await wait_idle(engine)
    aborted_before = engine.stats().finished_by_reason.get("abort", 0)
    stream = engine.generate("Count from one to a thousand: one, two,", SamplingParams(temperature=0.0, max_tokens=1000))
    received = 0
    async for _ in stream:
        received += 1
        if received == 3:
            break
    await stream.aclose()
    stats = await wait_idle(engine, lambda s: s.finished_by_reason.get("abort", 0) == aborted_before + 1)
    assert all(s.state == "idle" for s in stats.slots)
    assert text_of(await collect(engine, "Hello", SamplingParams(temperature=0.0, max_tokens=3)))


async def test_multibyte_text_round_trips(engine: AsyncEngine):
    # Rare characters are split into byte tokens; the stream must never cut one in half.
    prompt = "Repeat exactly: 𠀋😀中文𠀋😀中文𠀋😀中文𠀋😀中文"
    deltas = await collect(engine, prompt, SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True))
    text = text_of(deltas)
    assert text == engine.backend.detokenize(tokens_of(deltas))
    assert "\ufffd" not in text
    assert any(ord(ch) > 0xFFFF for ch in text) or "中" in text  # multi-byte characters came through


async def test_stop_string_ends_generation_and_is_not_emitted(engine: AsyncEngine):
    prompt = "1, 2, 3, 4, 5, 6, 7,"
    full = text_of(await collect(engine, prompt, SamplingParams(temperature=0.0, max_tokens=16)))
    assert " 9" in full
    stopped = await collect(engine, prompt, SamplingParams(temperature=0.0, max_tokens=16, stop=(" 9",)))
    assert stopped[-1].finish_reason is FinishReason.STOP
    assert text_of(stopped) == full[: full.index(" 9")]


async def test_overlong_prompt_is_refused_and_engine_keeps_serving(engine: AsyncEngine):
    long_prompt = "word " * 3000
    with pytest.raises(PromptTooLong):
        engine.generate(long_prompt, GREEDY)
    with pytest.raises(PromptTooLong):
        engine.generate("short prompt", SamplingParams(max_tokens=5000))
    assert text_of(await collect(engine, "The sky is", SamplingParams(temperature=0.0, max_tokens=3)))


async def test_sampling_with_a_seed_is_reproducible(engine: AsyncEngine):
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=1234, max_tokens=16, repeat_penalty=1.1)
    first = await collect(engine, "Once upon a time", params)
    second = await collect(engine, "Once upon a time", params)
    assert tokens_of(first) == tokens_of(second)


async def test_logit_bias_is_applied_the_same_by_greedy_and_sampling_paths(engine: AsyncEngine):
    prompt = "The capital of France is"
    best = tokens_of(await collect(engine, prompt, SamplingParams(temperature=0.0, max_tokens=1)))[0]
    ban = ((best, -100.0),)
    greedy = tokens_of(await collect(engine, prompt, SamplingParams(temperature=0.0, max_tokens=1, logit_bias=ban)))
    # top_k=1 after the bias is greedy too, but runs through llama.cpp's sampler chain.
    sampled = tokens_of(await collect(engine, prompt, SamplingParams(temperature=0.7, top_k=1, seed=3,
                                                                      max_tokens=1, logit_bias=ban)))
    assert greedy[0] != best
    assert greedy == sampled


async def test_ignore_eos_never_draws_an_end_of_generation_token(engine: AsyncEngine):
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    deltas = await collect(engine, "<start_of_turn>user\nSay OK.<end_of_turn>\n<start_of_turn>model\n", params)
    assert deltas[-1].finish_reason is FinishReason.LENGTH
    assert not any(engine.backend.is_end_of_generation(t) for t in tokens_of(deltas))
