"""Which quantisation to pull when a repository offers several. Pure: no I/O.

The rule (`choose_quant`), against the memory that will hold the weights:
1. plenty: the best of Q8_0 > Q6_K > Q5_K_M whose file uses at most half of it;
2. else Q4_K_M when it fits (the default);
3. else tight: the largest smaller file that fits (Q4_K_S, Q3_K_*, IQ*, Q2_K, ...);
   when Q4_K_M is not offered at all, the largest offered file that fits;
4. full-precision files (F16, BF16, F32) only when they are all that is offered;
5. nothing fits: NothingFits, naming the smallest file.

The memory (`weights_budget`): free VRAM when there is a GPU, else free RAM, less
the plan's safety margins (plan.usable_vram, plan.usable_ram), less room for the
KV cache and compute buffer: plan.py's arithmetic at the configured context when a
GGUF of the model is at hand (the KV cache does not depend on the weights' quant),
else a fifth of what is left. With a GPU too small for every offered file, the
weights may be split between VRAM and RAM (layers on the CPU), so that is tried next.
"""
from __future__ import annotations

from dataclasses import dataclass

from localllm.models.plan import ModelFacts, compute_bytes, usable_ram, usable_vram

DEFAULT = "Q4_K_M"
HIGHER = ("Q8_0", "Q6_K", "Q5_K_M")
"""Best first: taken when the file uses at most half of the usable memory."""
FULL_PRECISION = ("F32", "BF16", "F16")
MIB = 2**20
GIB = 2**30
UNKNOWN_RUNTIME_SHARE = 0.2
"""Share of usable memory kept for KV cache and compute when no GGUF can be measured."""


class NothingFits(ValueError):
    """No offered file fits the memory; the message says how much was usable."""


@dataclass(frozen=True, slots=True)
class WeightsBudget:
    usable_bytes: int
    """Memory the weights may take."""
    memory: str
    """What holds them: "VRAM", "RAM" or "VRAM+RAM" (some layers on the CPU)."""
    runtime_bytes: int
    """Kept aside for the KV cache and compute buffer."""
    runtime_note: str
    """How runtime_bytes was found, for the explanation."""


def choose_quant(sizes: dict[str, int], usable_bytes: int, memory: str = "memory") -> tuple[str, str]:
    """(quant, reason) from each offered quant's file size and the memory for the weights."""
    if not sizes:
        raise ValueError("no quantisations offered")
    usable_text = f"{_size(usable_bytes)} usable {memory}"
    for quant in HIGHER:
        if quant in sizes and 0 < usable_bytes and sizes[quant] <= usable_bytes / 2:
            return quant, (f"{quant}: {_size(sizes[quant])} uses {sizes[quant] / usable_bytes:.0%} of "
                           f"{usable_text} (plenty: a higher-quality quant)")
    if DEFAULT in sizes and sizes[DEFAULT] <= usable_bytes:
        higher = " (the default; a higher quant would use over half)" if set(HIGHER) & set(sizes) else \
            " (the default)"
        return DEFAULT, f"{DEFAULT}: {_size(sizes[DEFAULT])} fits {usable_text}{higher}"
    quantised = {q: s for q, s in sizes.items() if q.upper() not in FULL_PRECISION}
    if DEFAULT in sizes:
        smaller = {q: s for q, s in quantised.items() if s < sizes[DEFAULT]}
        why = f"{DEFAULT} ({_size(sizes[DEFAULT])}) does not fit {usable_text}"
    else:
        smaller, why = quantised, f"{DEFAULT} is not offered"
    fitting = {q: s for q, s in smaller.items() if s <= usable_bytes}
    if fitting:
        quant = max(fitting, key=fitting.get)
        tight = " (tight: lower quality)" if DEFAULT in sizes else ""
        return quant, f"{quant}: {why}; {quant} at {_size(fitting[quant])} is the largest that does{tight}"
    full = {q: s for q, s in sizes.items() if q not in quantised and s <= usable_bytes}
    if full and not quantised:
        quant = min(full, key=full.get)
        return quant, f"{quant}: the only kind offered, {_size(full[quant])} fits {usable_text}"
    smallest = min(sizes, key=sizes.get)
    raise NothingFits(f"no offered quantisation fits {usable_text} (smallest: {smallest}, "
                      f"{_size(sizes[smallest])}); free memory or pick one with --quant")


def weights_budgets(*, free_vram_bytes: int, free_ram_bytes: int, facts: ModelFacts | None = None,
                    slots: int = 4, ctx: int = 8192, num_batch: int = 512) -> list[WeightsBudget]:
    """The memories to choose against, best first: VRAM then VRAM+RAM with a GPU, else RAM."""
    vram = usable_vram(free_vram_bytes)  # the plan's own margins, so a pull and a load agree
    ram = usable_ram(free_ram_bytes)
    places = [("VRAM", vram), ("VRAM+RAM", vram + ram)] if vram > 0 else [("RAM", ram)]
    return [_budget(memory, after_margin, facts, slots, ctx, num_batch) for memory, after_margin in places]


def runtime_bytes(facts: ModelFacts, slots: int, ctx: int, num_batch: int) -> int:
    """f16 KV cache for `ctx` cells (slot context capped at the trained one) plus the compute buffer."""
    slot_ctx = max(1, ctx // slots)
    if facts.trained_ctx:
        slot_ctx = min(slot_ctx, facts.trained_ctx)
    kv = facts.kv_bytes_per_token_layer("f16") * facts.num_layers * slot_ctx * slots
    return int(kv) + compute_bytes(facts, slot_ctx, num_batch)


def _budget(memory: str, after_margin: int, facts: ModelFacts | None, slots: int, ctx: int,
            num_batch: int) -> WeightsBudget:
    if facts is not None:
        runtime = runtime_bytes(facts, slots, ctx, num_batch)
        note = f"{_size(runtime)} kept for the KV cache and compute buffer at ctx {ctx}"
    else:
        runtime = int(after_margin * UNKNOWN_RUNTIME_SHARE)
        note = (f"{_size(runtime)} (a fifth) kept for the KV cache and compute buffer: "
                "no local GGUF of this model to measure them")
    return WeightsBudget(max(0, after_margin - runtime), memory, runtime, note)


def choose_for(sizes: dict[str, int], budgets: list[WeightsBudget]) -> tuple[str, str]:
    """choose_quant against each budget in turn; the first that fits wins. Raises the first
    budget's NothingFits when none does."""
    first: NothingFits | None = None
    for budget in budgets:
        try:
            quant, reason = choose_quant(sizes, budget.usable_bytes, budget.memory)
        except NothingFits as exc:
            first = first or exc
            continue
        return quant, f"{reason}; {budget.runtime_note}"
    assert first is not None
    raise first


def _size(num_bytes: float) -> str:
    if num_bytes >= GIB:
        return f"{num_bytes / GIB:.1f} GiB"
    return f"{num_bytes / MIB:,.0f} MiB"
