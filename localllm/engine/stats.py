"""The engine thread's counters and the `EngineStats` snapshot that other threads read."""
from __future__ import annotations

import time
from collections import Counter, deque

from localllm.engine.request import RequestState
from localllm.engine.scheduler import Scheduler, StepPlan
from localllm.engine.slots import Slot
from localllm.types import EngineStats, SlotStats, TokenDelta

RATE_WINDOW_S = 5.0
STATS_INTERVAL_S = 0.05
"""Token counters in the stats snapshot may lag by this much: building the snapshot every
step cost ~5% of a single stream's step (py-spy, docs/performance.md). Admissions, finishes
and aborts refresh it at once."""


class EngineCounters:
    """Engine thread only; `snapshot` is immutable and replaced whole, so any thread may read it."""

    def __init__(self, scheduler: Scheduler, model_name: str, num_kv_cells_total: int) -> None:
        self._scheduler = scheduler
        self._model_name = model_name
        self._num_kv_cells_total = num_kv_cells_total
        self._num_steps = 0
        self._num_prompt_tokens = 0
        self._num_generated_tokens = 0
        self._num_reused_tokens = 0
        self._num_admitted = 0
        self._num_prefix_hits = 0
        self._finished: Counter[str] = Counter()
        self._rate_samples: deque[tuple[float, int, int]] = deque()
        self._num_kv_cells_used = 0
        self._kv_counted_s = 0.0
        self._snapshot_s = 0.0
        self._heartbeat_s = time.monotonic()
        """The engine loop's last sign of life: it refreshes the snapshot at least every 0.5 s."""
        self.snapshot: EngineStats = self._build()

    def count(self, plan: StepPlan, deltas: list[TokenDelta]) -> None:
        """Adds a step's (or an abort's) admissions, tokens and finishes to the counters."""
        self._num_steps += 1 if plan.chunks else 0
        self._num_prompt_tokens += plan.num_prompt_tokens
        self._num_generated_tokens += sum(len(d.token_ids) for d in deltas)
        for request in plan.admitted:
            self._num_reused_tokens += request.num_reused_tokens
            self._num_admitted += 1
            self._num_prefix_hits += request.num_reused_tokens > 0
        for delta in deltas:
            if delta.finish_reason is not None:
                self._finished[delta.finish_reason.value] += 1

    def refresh(self, *, at_once: bool) -> None:
        """Rebuilds the snapshot, at once or when the last one is STATS_INTERVAL_S old."""
        now = time.monotonic()
        if not at_once and now - self._snapshot_s < STATS_INTERVAL_S:
            return
        self._heartbeat_s = self._snapshot_s = now
        samples = self._rate_samples
        if not samples or now - samples[-1][0] >= 0.25:
            samples.append((now, self._num_prompt_tokens, self._num_generated_tokens))
            while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW_S:
                samples.popleft()
        if now - self._kv_counted_s >= 0.5:  # sorting the caches costs more than a step's bookkeeping
            self._num_kv_cells_used = self._scheduler.slot_table.num_kv_cells_used()
            self._kv_counted_s = now
        self.snapshot = self._build()

    def _build(self) -> EngineStats:
        now = time.monotonic()
        prompt_rate = gen_rate = 0.0
        if len(self._rate_samples) >= 2:
            t0, p0, g0 = self._rate_samples[0]
            span = max(now - t0, 1e-6)
            prompt_rate = (self._num_prompt_tokens - p0) / span
            gen_rate = (self._num_generated_tokens - g0) / span
        scheduler = self._scheduler
        return EngineStats(
            model=self._model_name,
            num_slots=len(scheduler.slot_table.slots),
            num_busy_slots=len(scheduler.running),
            num_waiting=len(scheduler.waiting),
            prompt_tokens_per_s=prompt_rate,
            generation_tokens_per_s=gen_rate,
            num_prompt_tokens_total=self._num_prompt_tokens,
            num_generated_tokens_total=self._num_generated_tokens,
            num_reused_tokens_total=self._num_reused_tokens,
            num_admitted_total=self._num_admitted,
            num_prefix_hits_total=self._num_prefix_hits,
            num_kv_cells_used=self._num_kv_cells_used,
            num_kv_cells_total=self._num_kv_cells_total,
            num_steps=self._num_steps,
            finished_by_reason=dict(self._finished),
            slots=tuple(_slot_stats(slot, now) for slot in scheduler.slot_table.slots),
            loop_heartbeat_s=self._heartbeat_s,
        )


def _slot_stats(slot: Slot, now: float) -> SlotStats:
    request = slot.request
    if request is None:
        return SlotStats(slot.slot_id, "idle", None, len(slot.cached_token_ids), 0, 0, 0.0, slot.cache_namespace)
    state = "prefill" if request.state is RequestState.PREFILL else "decode"
    return SlotStats(
        slot.slot_id, state, request.request_id, len(slot.cached_token_ids),
        len(request.output_token_ids), request.num_reused_tokens, now - request.arrival_s, slot.cache_namespace,
    )
