"""Workloads: the list of requests one level of a sweep sends (plain, shared-prefix, repeated, mixed).

A workload is built ahead of time from a seed, so two servers measured with the same
seed receive the same prompts in the same order. Prompt lengths are counted in
synthetic words drawn from common English words (about one token each for Gemma's
and Llama's vocabularies); the servers' `usage.prompt_tokens` gives the exact count.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

WORKLOADS = ("plain", "shared-prefix", "repeated", "mixed")

STORY_PROMPTS = (
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how bread rises, step by step, for a beginner baker.",
    "Describe a walk through a busy market in a city you imagine.",
    "List and explain many reasons people enjoy learning languages.",
    "Tell the history of a fictional island nation from its founding.",
    "Write a detailed guide to caring for houseplants in winter.",
    "Describe the life cycle of a star from birth to its final stage.",
    "Write a letter from a traveller describing a long train journey.",
)

_WORDS = (
    "the of and to in is was for on that with as by at from his her they this had are but not be one "
    "all were when we there can an your which their said if do will each about how up out them then she "
    "many some so these would other into has more two like him see time could no make than first been "
    "its who now people my made over did down only way find use may water long little very after words "
    "called just where most know get through back much before go good new write our used me man too any "
    "day same right look think also around another came come work three word must because does part even "
    "place well such here take why things help put years different away again off went old number great "
    "tell men say small every found still between name should home big give air line set own under read "
    "last never us left end along while might next sound below saw something thought both few those always "
    "looked show large often together asked house world going want school important until form food keep "
    "children feet land side without boy once animals life enough took sometimes four head above kind began "
    "almost live page got earth need far hand high year mother light parts country father let night following "
    "picture being study second eyes soon times story boys since white days ever paper hard near sentence "
    "better best across during today others however sure means knew its try told young miles sun ways thing "
    "whole hear example heard several change answer room sea against top turned learn point city play toward "
    "five using himself usually"
).split()

_QUESTIONS = (
    "How do I reset my password?", "Can I return an opened item?", "What are your opening hours?",
    "Do you ship abroad?", "How long does delivery take?", "Is there a warranty on laptops?",
    "Can I change my order after paying?", "How do I track my parcel?", "Do you price match?",
    "Which payment methods do you accept?", "Can I pick up in store?", "How do I cancel a subscription?",
)


@dataclass(frozen=True, slots=True)
class Length:
    """A token count: fixed (`lo == hi`) or sampled uniformly from `lo..hi`."""

    lo: int
    """Smallest value."""
    hi: int
    """Largest value (inclusive)."""

    def __post_init__(self) -> None:
        if not 1 <= self.lo <= self.hi:
            raise ValueError(f"need 1 <= lo <= hi, got {self.lo}..{self.hi}")

    @classmethod
    def parse(cls, text: str | int) -> Length:
        """`"128"` -> fixed 128; `"64:256"` -> sampled from 64..256."""
        lo, _, hi = str(text).partition(":")
        return cls(int(lo), int(hi or lo))

    def sample(self, rng: random.Random) -> int:
        return self.lo if self.lo == self.hi else rng.randint(self.lo, self.hi)

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}:{self.hi}"


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """What one level of the sweep sends."""

    name: str = "plain"
    """plain | shared-prefix | repeated | mixed."""
    max_tokens: Length = Length(128, 128)
    """Output tokens per request (`ignore_eos` keeps every request at exactly this)."""
    prompt_tokens: Length | None = None
    """Synthetic prompt length in words; None: short natural prompts (plain) or the workload's own."""
    prefix_tokens: int = 1000
    """shared-prefix: length of the shared prefix; mixed: length of the shared system prompt / 2."""
    group_size: int = 4
    """shared-prefix: requests per prefix (the first is cold, the others warm)."""
    repeat_fraction: float = 0.3
    """repeated / mixed: fraction of requests that exactly repeat an earlier one (temperature 0)."""
    temperature: float = 0.8
    """plain / shared-prefix sampling temperature (repeated and mixed use 0)."""
    ignore_eos: bool = True
    """Ask the server to generate exactly max_tokens (llama-server and localllm honour it)."""
    seed: int = 0
    """Seeds prompt text, sampled lengths and the placement of repeats."""

    def __post_init__(self) -> None:
        if self.name not in WORKLOADS:
            raise ValueError(f"unknown workload {self.name!r}; one of {', '.join(WORKLOADS)}")
        if not 0.0 <= self.repeat_fraction < 1.0:
            raise ValueError("repeat_fraction must be in [0, 1)")
        if self.group_size < 1 or self.prefix_tokens < 1:
            raise ValueError("group_size and prefix_tokens must be positive")


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request of a workload."""

    prompt: str
    max_tokens: int
    temperature: float
    tag: str = ""
    """Groups results in the report: cold / warm (shared-prefix), original / repeat (repeated, mixed)."""
    after: int | None = None
    """Index of a request that must have finished before this one starts (its cold prefix or original)."""
    bypass_cache: bool = True
    """Send `X-LocalLLM-Cache: off` so the response cache cannot answer (the engine is measured)."""


def words(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(num_words))


def build_requests(config: WorkloadConfig, num_requests: int, concurrency: int, salt: str = "") -> list[RequestSpec]:
    """The requests of one level. `salt` starts every prompt so a level never reuses what an earlier
    level left in the server's caches; the rest depends on `config.seed` only."""
    rng = random.Random(config.seed)
    builders = {"plain": _plain, "shared-prefix": _shared_prefix, "repeated": _repeated, "mixed": _mixed}
    return builders[config.name](config, num_requests, concurrency, rng, f"[{salt}] " if salt else "")


def _plain(config: WorkloadConfig, num_requests: int, concurrency: int, rng: random.Random,
           salt: str) -> list[RequestSpec]:
    specs = []
    for i in range(num_requests):
        if config.prompt_tokens is None:
            text = STORY_PROMPTS[i % len(STORY_PROMPTS)]
        else:
            text = words(rng, config.prompt_tokens.sample(rng))
        specs.append(RequestSpec(f"{salt}{i}. {text}", config.max_tokens.sample(rng), config.temperature))
    return specs


def _shared_prefix(config: WorkloadConfig, num_requests: int, concurrency: int, rng: random.Random,
                   salt: str) -> list[RequestSpec]:
    """Groups of `group_size`: one new ~prefix_tokens prefix, then distinct tails on the same prefix.
    The first of a group is cold; the others wait for it and are warm."""
    specs: list[RequestSpec] = []
    prefix = ""
    cold_index = 0
    tail_len = config.prompt_tokens or Length(8, 16)
    for i in range(num_requests):
        if i % config.group_size == 0:
            prefix = f"{salt}Document {i // config.group_size}: {words(rng, config.prefix_tokens)}\n"
            cold_index = i
        tail = f"Question {i}: {words(rng, tail_len.sample(rng))}?\nAnswer:"
        cold = i == cold_index
        specs.append(RequestSpec(prefix + tail, config.max_tokens.sample(rng), config.temperature,
                                 tag="cold" if cold else "warm", after=None if cold else cold_index))
    return specs


def _repeat_plan(config: WorkloadConfig, num_requests: int, concurrency: int, rng: random.Random) -> list[int | None]:
    """For each request, the index of the earlier request it repeats, or None for an original.
    A repeat copies a request at least `concurrency` places earlier (usually finished by then);
    repeats are spread evenly so their share is `repeat_fraction` wherever possible."""
    plan: list[int | None] = []
    owed = 0.0
    for i in range(num_requests):
        owed += config.repeat_fraction
        eligible = [j for j in range(max(0, i - concurrency + 1)) if plan[j] is None]
        if owed >= 1.0 and eligible:
            plan.append(rng.choice(eligible))
            owed -= 1.0
        else:
            plan.append(None)
    return plan


def _with_repeats(originals: list[RequestSpec], plan: list[int | None]) -> list[RequestSpec]:
    specs: list[RequestSpec] = []
    for i, source in enumerate(plan):
        if source is None:
            specs.append(originals[i])
        else:
            first = specs[source]
            specs.append(RequestSpec(first.prompt, first.max_tokens, 0.0, tag="repeat", after=source,
                                     bypass_cache=False))
    return specs


def _repeated(config: WorkloadConfig, num_requests: int, concurrency: int, rng: random.Random,
              salt: str) -> list[RequestSpec]:
    plan = _repeat_plan(config, num_requests, concurrency, rng)
    length = config.prompt_tokens or Length(32, 64)
    originals = [RequestSpec(f"{salt}{i}. {words(rng, length.sample(rng))}", config.max_tokens.sample(rng), 0.0,
                             tag="original", bypass_cache=False) for i in range(num_requests)]
    return _with_repeats(originals, plan)


def _mixed(config: WorkloadConfig, num_requests: int, concurrency: int, rng: random.Random,
           salt: str) -> list[RequestSpec]:
    """A help-desk: one shared system prompt, short distinct questions, `repeat_fraction` exact repeats."""
    plan = _repeat_plan(config, num_requests, concurrency, rng)
    system = (f"{salt}You are the help desk of a hardware shop. Answer briefly and politely. Shop notes: "
              f"{words(rng, config.prefix_tokens // 2)}\n")
    originals = []
    for i in range(num_requests):
        question = f"{rng.choice(_QUESTIONS)} (customer {i}: {words(rng, rng.randint(4, 12))})"
        originals.append(RequestSpec(f"{system}User: {question}\nAssistant:", config.max_tokens.sample(rng), 0.0,
                                     tag="original", bypass_cache=False))
    return _with_repeats(originals, plan)
