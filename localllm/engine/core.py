"""EngineCore: the busy loop on the engine thread (schedule, run, update)."""
from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Mapping

from localllm.engine.contracts import StepBackend
from localllm.engine.errors import NoKvRoom, PrefixWindowGone, SavedPrefixGone
from localllm.engine.messages import AbortRequest, AddRequest, Command, Shutdown
from localllm.engine.prefix_states import PrefixStates
from localllm.engine.scheduler import Scheduler, StepPlan
from localllm.engine.slots import KvCopy, KvRestore
from localllm.engine.stats import EngineCounters
from localllm.types import EngineStats, TokenDelta

log = logging.getLogger(__name__)
IDLE_WAKE_S = 0.5  # an idle loop still wakes to refresh its heartbeat and rates


class EngineCore:
    """Owns the scheduler, the backend and `prefix_states` (which restores the saved prefix states
    that the scheduler plans, found by its `saved_prefix`, i.e. `prefix_states.find`); runs until a
    Shutdown command."""

    def __init__(
        self,
        backend: StepBackend,
        scheduler: Scheduler,
        publish: Callable[[list[TokenDelta]], None],
        model_name: str,
        num_kv_cells_total: int,
        prefix_states: PrefixStates | None = None,
    ) -> None:
        self.backend = backend
        self.scheduler = scheduler
        self.commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._prefix_states = prefix_states
        self._publish = publish
        self._counters = EngineCounters(scheduler, model_name, num_kv_cells_total)

    @property
    def stats(self) -> EngineStats:  # any thread: the snapshot published after the last step
        return self._counters.snapshot

    def run(self) -> None:
        while self._take_commands():
            if self.scheduler.has_work:
                self._step()
            else:
                self._counters.refresh(at_once=True)
        log.info("engine loop stopped")

    def _step(self) -> None:
        plan: StepPlan | None = None
        try:
            # 1. Schedule: admit waiting requests into slots primed with their longest cached
            #    prefix, then one token per generating request and prompt chunks, within n_batch.
            plan = self.scheduler.schedule()
            # 2. Run: put the admitted prefixes in place, one llama_decode, one sample per row.
            sampled = self._run(plan)
            # 3. Update: the scheduler turns samples into deltas; save newly evaluated long
            #    prompts, then count, free finished samplers and publish.
            deltas = self.scheduler.update(plan, sampled, self.backend.take_logprobs())
            if self._prefix_states is not None:
                self._prefix_states.save_evaluated_prompts(plan)
            self._update(plan, deltas)
        except Exception as exc:  # the one place a failed step ends: its requests fail, the loop goes on
            log.exception("engine step failed; failing its requests")
            deltas, ops = self.scheduler.fail(plan, f"engine error: {exc}")
            try:
                self.backend.apply_kv_ops(ops)
            except Exception:
                log.exception("could not clear KV cells after a failed step")
            self._update(StepPlan(), deltas)

    def _run(self, plan: StepPlan) -> Mapping[str, int]:
        if plan.kv_ops:
            self._place_prefixes(plan)
        try:
            return self.backend.decode(plan.chunks)
        except NoKvRoom:  # nothing changed (errors.py); idle slots' prefixes are the cells we may take back
            self.backend.apply_kv_ops(self.scheduler.slot_table.forget_idle())
            return self.backend.decode(plan.chunks)

    def _place_prefixes(self, plan: StepPlan) -> None:
        """Applies the admissions' KV ops in order. A prefix that cannot be put in place (a window
        already gone, a saved state evicted or unusable) leaves its request to evaluate its
        whole prompt, and so does any request that copied from its slot."""
        cold: set[int] = set()
        for op in plan.kv_ops:
            slot_id = op.dst_slot_id if isinstance(op, KvCopy) else op.slot_id
            if slot_id in cold or (isinstance(op, KvCopy) and op.src_slot_id in cold):
                cold.add(slot_id)
                continue
            try:
                if isinstance(op, KvRestore):
                    self._prefix_states.restore(op)  # type: ignore[union-attr]  # only planned with a store
                else:
                    self.backend.apply_kv_ops((op,))
            except Exception as exc:
                expected = isinstance(exc, (PrefixWindowGone, SavedPrefixGone))  # swa_full off, or evicted
                log.log(logging.DEBUG if expected else logging.ERROR, "prefix not reusable, evaluating the prompt: %s",
                        exc, exc_info=not expected)
                cold.add(slot_id)
        if cold:
            self.backend.apply_kv_ops(self.scheduler.start_cold(plan, cold))

    def _update(self, plan: StepPlan, deltas: list[TokenDelta]) -> None:
        """Counts, frees finished requests' samplers, refreshes stats (a client that sees a token
        sees stats that include it) and hands the deltas over in one call."""
        finished = False
        for delta in deltas:
            if delta.finish_reason is not None:
                finished = True
                self.backend.remove_sampler(delta.request_id)
        self._counters.count(plan, deltas)
        self._counters.refresh(at_once=finished or bool(plan.admitted))
        if deltas:
            self._publish(deltas)

    def _take_commands(self) -> bool:
        """Applies queued commands; blocks briefly only when idle. False on Shutdown."""
        block = not self.scheduler.has_work
        ended: list[TokenDelta] = []
        while True:
            try:
                command = self.commands.get(block=block, timeout=IDLE_WAKE_S if block else None)
            except queue.Empty:
                break
            block = False
            if isinstance(command, Shutdown):
                self._update(StepPlan(), ended + self.scheduler.abort_all())
                return False
            if isinstance(command, AddRequest):
                request = command.request
                try:  # built before it queues: a sampler llama.cpp refuses fails this request alone
                    self.backend.add_sampler(request.request_id, request.params)
                except Exception as exc:
                    log.warning("could not build a sampler for %s: %s", request.request_id, exc)
                    ended.append(self.scheduler.reject(request, f"sampler: {exc}"))
                    continue
                self.scheduler.add(request)
            elif isinstance(command, AbortRequest):
                delta = self.scheduler.abort(command.request_id)
                if delta is not None:
                    ended.append(delta)
        if ended:
            self._update(StepPlan(), ended)
        return True
