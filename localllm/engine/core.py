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
        self._stopping = False
        self._unpublished: list[TokenDelta] = []
        """Final deltas not yet handed to `publish`; `_fail` re-sends those a failure lost."""

    @property
    def stats(self) -> EngineStats:  # any thread: the snapshot published after the last step
        return self._counters.snapshot

    def run(self) -> None:
        while not self._stopping:
            try:
                if self._take_commands() and not self.scheduler.has_work:
                    self._counters.refresh(at_once=True)
            except Exception as exc:  # handling a command failed: `_fail` ends what it left unserved
                self._fail(None, exc)
                continue
            if not self._stopping and self.scheduler.has_work:
                self._step()
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
            #    prompts, then count, publish and free finished samplers.
            deltas = self.scheduler.update(plan, sampled, self.backend.take_logprobs())
            if self._prefix_states is not None:
                self._prefix_states.save_evaluated_prompts(plan)
            self._update(plan, deltas)
        except Exception as exc:  # a failed step ends in `_fail`: its requests fail, the loop goes on
            self._fail(plan, exc)

    def _fail(self, plan: StepPlan | None, exc: Exception) -> None:
        """Fails the requests a failure left unserved: the plan's, or with no plan (a failure
        in command handling) every running one, and re-sends final deltas a failed publish
        lost. The one place failures end; never raises: the engine thread must outlive any failure."""
        log.error("engine step failed; failing its requests", exc_info=exc)
        lost, self._unpublished = self._unpublished, []
        try:
            deltas, ops = self.scheduler.fail(plan, f"engine error: {exc}")
            try:
                self.backend.apply_kv_ops(ops)
            finally:
                self._update(StepPlan(), lost + deltas)
        except Exception:
            self._unpublished = []  # nothing more can reach those streams; keep serving the rest
            log.exception("could not fail the requests of a failed step")

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
        """Counts, refreshes stats (a client that sees a token sees stats that include it), hands
        the deltas over in one call, then frees finished requests' samplers. Final deltas stay in
        `_unpublished` until handed over, for `_fail` to re-send."""
        finals = [d for d in deltas if d.finish_reason is not None]
        self._unpublished += finals
        try:
            self._counters.count(plan, deltas)
            self._counters.refresh(at_once=bool(finals) or bool(plan.admitted))
        finally:  # a final delta goes out whatever failed before it
            if deltas:
                self._publish(deltas)
            self._unpublished = []
        for delta in finals:
            self.backend.remove_sampler(delta.request_id)

    def _take_commands(self) -> bool:
        """Applies queued commands; blocks briefly only when idle. False on Shutdown."""
        block = not self.scheduler.has_work
        ended: list[TokenDelta] = []
        try:
            while True:
                try:
                    command = self.commands.get(block=block, timeout=IDLE_WAKE_S if block else None)
                except queue.Empty:
                    return True
                block = False
                if isinstance(command, Shutdown):
                    self._stopping = True  # set first: a failure below must not keep the loop running
                    ended += self.scheduler.abort_all()
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
        finally:  # requests ended so far get their final deltas even if a later command failed
            if ended:
                self._update(StepPlan(), ended)
