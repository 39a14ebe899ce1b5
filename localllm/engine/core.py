"""EngineCore: the busy loop on the engine thread (plan, run, update)."""
from __future__ import annotations

import logging
import queue
import time
from collections import Counter, deque
from collections.abc import Callable

from localllm.engine.contracts import PrefixStateStore, StepBackend
from localllm.engine.disk_prefix import DiskPrefixes
from localllm.engine.errors import NoKvRoom, PrefixWindowGone
from localllm.engine.messages import AbortRequest, AddRequest, Command, Shutdown
from localllm.engine.request import RequestState
from localllm.engine.scheduler import Scheduler, StepPlan
from localllm.engine.slots import KvTrim
from localllm.types import EngineStats, SlotStats, TokenDelta

log = logging.getLogger(__name__)

IDLE_WAKE_S = 0.5  # an idle loop still wakes to refresh its heartbeat and rates
RATE_WINDOW_S = 5.0
STATS_INTERVAL_S = 0.05
"""Token counters in the stats snapshot may lag by this much: building the snapshot every
step cost ~5% of a single stream's step (py-spy, docs/performance.md). Admissions, finishes
and aborts refresh it at once."""


class EngineCore:
    """Owns the scheduler and the backend; runs until a Shutdown command."""

    def __init__(
        self,
        backend: StepBackend,
        scheduler: Scheduler,
        publish: Callable[[list[TokenDelta]], None],
        model_name: str,
        num_kv_cells_total: int,
        prefix_store: PrefixStateStore | None = None,
    ) -> None:
        self.backend = backend
        self.scheduler = scheduler
        self._disk = DiskPrefixes(prefix_store, backend, scheduler) if prefix_store is not None else None
        self.commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._publish = publish
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
        self._stats_s = 0.0
        self.heartbeat_s = time.monotonic()
        self.stats: EngineStats = self._snapshot()

    def run(self) -> None:
        while self._take_commands():
            if not self.scheduler.has_work:
                self._refresh_stats()
                continue
            try:
                self._step()
            except Exception:  # a bug here must not kill the thread and strand every client
                log.exception("engine step failed; failing the running requests")
                self._fail_running("engine error")
        log.info("engine loop stopped")

    def _step(self) -> None:
        # 1. Admit waiting requests into slots, from the longest cached prefix (live or on disk).
        plan = self._admit()
        # 2. Plan the batch: one token per generating request, then prompt chunks.
        self.scheduler.fill(plan)
        # 3. Run: one llama_decode for the batch, sampling per output row.
        deltas = self._run_step(plan)
        # 4. Update: save newly evaluated long prompts, free finished requests' samplers,
        #    refresh stats (a client that sees a token sees stats that include it), and
        #    hand the deltas over in one call.
        if self._disk is not None:
            self._disk.save_evaluated_prompts(plan)
        self._count_step(plan, deltas)
        if plan.admitted or any(d.finish_reason is not None for d in deltas):
            self._refresh_stats()
        else:
            self._refresh_stats_every(STATS_INTERVAL_S)
        if deltas:
            self._publish(deltas)

    def _fail_running(self, message: str) -> None:
        deltas = [self.scheduler.fail_request(request_id, message) for request_id in list(self.scheduler.running)]
        try:
            self.backend.apply_kv_ops([KvTrim(s.slot_id, 0) for s in self.scheduler.slot_table.slots])
        except Exception:
            log.exception("could not clear the KV cache after a failed step")
        self._count_step(StepPlan(), deltas)
        self._refresh_stats()
        self._publish(deltas)

    def _admit(self) -> StepPlan:
        plan = self.scheduler.admit()
        if plan.admitted:
            try:
                self.backend.apply_kv_ops(plan.kv_ops)
            except Exception as exc:  # the admitted requests' caches are unknown: start them cold
                if isinstance(exc, PrefixWindowGone):  # swa_full off: expected
                    log.debug("prefix not reusable: %s", exc)
                else:
                    log.exception("prefix copy/trim failed")
                self._cold_start(plan)
            plan.kv_ops = []
            if self._disk is not None:
                self._disk.restore(plan.admitted)
        for request in list(plan.admitted):
            try:
                self.backend.add_sampler(request.request_id, request.params)
            except Exception as exc:  # e.g. a grammar llama.cpp refuses: this request fails, not the step
                log.warning("could not build a sampler for %s: %s", request.request_id, exc)
                plan.admitted.remove(request)
                delta = self.scheduler.fail_request(request.request_id, f"sampler: {exc}")
                self._count_step(StepPlan(), [delta])
                self._publish([delta])
                continue
            self._num_reused_tokens += request.num_reused_tokens
            self._num_admitted += 1
            self._num_prefix_hits += request.num_reused_tokens > 0
        return plan

    def _cold_start(self, plan: StepPlan) -> None:
        for request in plan.admitted:
            self.backend.apply_kv_ops([KvTrim(request.slot_id, 0)])
            self.scheduler.extend_reuse(request, 0)

    def _take_commands(self) -> bool:
        """Applies queued commands; blocks briefly only when idle. False on Shutdown."""
        self.heartbeat_s = time.monotonic()
        block = not self.scheduler.has_work
        aborted: list[TokenDelta] = []
        while True:
            try:
                command = self.commands.get(block=block, timeout=IDLE_WAKE_S if block else None)
            except queue.Empty:
                break
            block = False
            if isinstance(command, Shutdown):
                self._abort_everything()
                return False
            if isinstance(command, AddRequest):
                self.scheduler.add(command.request)
            elif isinstance(command, AbortRequest):
                delta = self.scheduler.abort(command.request_id)
                if delta is not None:
                    aborted.append(delta)
        if aborted:
            self._count_step(StepPlan(), aborted)
            self._refresh_stats()
            self._publish(aborted)
        return True

    def _run_step(self, plan: StepPlan) -> list[TokenDelta]:
        try:
            self.backend.apply_kv_ops(plan.kv_ops)
            try:
                sampled = self.backend.decode(plan.chunks)
            except NoKvRoom:
                # Idle slots' cached prefixes are the only cells we may take back.
                self.backend.apply_kv_ops([self.scheduler.slot_table.forget(s.slot_id)
                                           for s in self.scheduler.slot_table.free_slots()])
                sampled = self.backend.decode(plan.chunks)
            deltas = self.scheduler.update(plan, sampled)
            logprobs = self.backend.take_logprobs()
            if logprobs:
                for delta in deltas:
                    if delta.request_id in logprobs:
                        delta.logprobs = [logprobs[delta.request_id]]
            return deltas
        except Exception as exc:  # a failed step must not kill the loop or leak slots
            log.exception("engine step failed")
            deltas, ops = self.scheduler.fail(plan, f"engine error: {exc}")
            try:
                self.backend.apply_kv_ops(ops)
            except Exception:
                log.exception("could not clear KV cells after a failed step")
            return deltas

    def _count_step(self, plan: StepPlan, deltas: list[TokenDelta]) -> None:
        self._num_steps += 1 if plan.chunks else 0
        self._num_prompt_tokens += plan.num_prompt_tokens
        self._num_generated_tokens += sum(len(d.token_ids) for d in deltas)
        for delta in deltas:
            if delta.finish_reason is not None:
                self._finished[delta.finish_reason.value] += 1
                self.backend.remove_sampler(delta.request_id)

    def _abort_everything(self) -> None:
        ids = [r.request_id for r in self.scheduler.waiting] + list(self.scheduler.running)
        deltas = [d for d in (self.scheduler.abort(i) for i in ids) if d is not None]
        if deltas:
            self._count_step(StepPlan(), deltas)
            self._publish(deltas)

    def _refresh_stats_every(self, interval_s: float) -> None:
        if time.monotonic() - self._stats_s >= interval_s:
            self._refresh_stats()

    def _refresh_stats(self) -> None:
        now = time.monotonic()
        self.heartbeat_s = self._stats_s = now
        samples = self._rate_samples
        if not samples or now - samples[-1][0] >= 0.25:
            samples.append((now, self._num_prompt_tokens, self._num_generated_tokens))
            while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW_S:
                samples.popleft()
        if now - self._kv_counted_s >= 0.5:  # sorting the caches costs more than a step's bookkeeping
            self._num_kv_cells_used = self.scheduler.slot_table.num_kv_cells_used()
            self._kv_counted_s = now
        self.stats = self._snapshot()

    def _snapshot(self) -> EngineStats:
        now = time.monotonic()
        prompt_rate = gen_rate = 0.0
        if len(self._rate_samples) >= 2:
            t0, p0, g0 = self._rate_samples[0]
            span = max(now - t0, 1e-6)
            prompt_rate = (self._num_prompt_tokens - p0) / span
            gen_rate = (self._num_generated_tokens - g0) / span
        table = self.scheduler.slot_table
        return EngineStats(
            model=self._model_name,
            num_slots=len(table.slots),
            num_busy_slots=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
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
            slots=tuple(_slot_stats(slot, now) for slot in table.slots),
            loop_heartbeat_s=self.heartbeat_s,
        )


def _slot_stats(slot, now: float) -> SlotStats:
    request = slot.request
    if request is None:
        return SlotStats(slot.slot_id, "idle", None, len(slot.cached_token_ids), 0, 0, 0.0)
    state = "prefill" if request.state is RequestState.PREFILL else "decode"
    return SlotStats(
        slot.slot_id, state, request.request_id, len(slot.cached_token_ids),
        len(request.output_token_ids), request.num_reused_tokens, now - request.arrival_s,
    )
