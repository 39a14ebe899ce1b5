"""Saved KV prefix states: restore one into a newly admitted request's slot when it covers
more of the prompt than any live slot, and save long prompts once they are evaluated.

The store itself (on disk) is injected; the engine never imports it."""
from __future__ import annotations

import logging
from localllm.engine.contracts import PrefixStateStore, SequenceStates
from localllm.engine.errors import PrefixWindowGone
from localllm.engine.request import Request
from localllm.engine.scheduler import Scheduler, StepPlan
from localllm.engine.slots import KvTrim

log = logging.getLogger(__name__)


class DiskPrefixes:
    """Engine thread only. Failures are logged and the request simply evaluates its prompt."""

    def __init__(self, store: PrefixStateStore, backend: SequenceStates, scheduler: Scheduler) -> None:
        self.store = store
        self._backend = backend
        self._scheduler = scheduler

    def restore(self, admitted: list[Request]) -> None:
        """Call after the admission's KV ops are applied and before the batch is filled."""
        for request in admitted:
            found = self.store.longest(request.prompt_token_ids)
            if found is None:
                continue
            key, shared = found
            usable = min(shared, request.num_prompt_tokens - 1)  # always evaluate one prompt token
            if usable <= request.num_reused_tokens:
                continue  # a live slot already gave as much
            data = self.store.load(key)
            if data is None:
                continue
            try:
                self._backend.restore_sequence(request.slot_id, data)
                self._backend.apply_kv_ops([KvTrim(request.slot_id, usable)])
            except Exception as exc:
                if isinstance(exc, PrefixWindowGone):  # swa_full off: expected, the saved window ends too early
                    log.debug("saved prefix not reusable: %s", exc)
                else:
                    log.exception("restoring a saved prefix failed; evaluating the prompt instead")
                self._backend.apply_kv_ops([KvTrim(request.slot_id, 0)])
                usable = 0
            self._scheduler.extend_reuse(request, usable)

    def save_evaluated_prompts(self, plan: StepPlan) -> None:
        """Call after the step's update: slots whose prompt just finished hold exactly it."""
        for chunk in plan.chunks:
            if not (chunk.is_prompt and chunk.wants_logits):
                continue
            prompt = chunk.request.prompt_token_ids
            if len(prompt) < self.store.min_tokens or self.store.covers(prompt):
                continue
            try:
                self.store.save(prompt, self._backend.save_sequence(chunk.slot_id))
            except Exception:
                log.exception("saving a prefix state failed")
