"""Prefix states (saved KV states on disk), the engine's side: the scheduler asks `find` for the
best one when it admits a request (it is used when it covers more of the prompt than the prefix
cache in memory, i.e. any live slot), the core `restore`s it into the slot, and long prompts are
saved once they are evaluated.

The store itself (on disk) is injected; the engine never imports it."""
from __future__ import annotations

import logging

from localllm.engine.contracts import PrefixStateStore, SequenceStates
from localllm.engine.errors import SavedPrefixGone
from localllm.engine.request import Request
from localllm.engine.scheduler import StepPlan
from localllm.engine.slots import KvRestore, KvTrim

log = logging.getLogger(__name__)


class PrefixStates:
    """Engine thread only."""

    def __init__(self, store: PrefixStateStore, backend: SequenceStates) -> None:
        self.store = store
        self._backend = backend

    def find(self, request: Request) -> tuple[str, int] | None:
        """(key, prompt tokens it can give) of the best saved prefix, leaving at least one prompt
        token to evaluate; None if there is none. Changes nothing."""
        try:
            found = self.store.longest(request.prompt_token_ids, request.cache_namespace)
        except Exception:  # the contract says misses, not errors; a store bug must not fail admission
            log.exception("looking up saved prefix states failed")
            return None
        if found is None:
            return None
        key, shared = found
        usable = min(shared, request.num_prompt_tokens - 1)
        return (key, usable) if usable > 0 else None

    def restore(self, op: KvRestore) -> None:
        """Puts the saved state in the slot, trimmed to op.num_tokens. Raises SavedPrefixGone, or
        BackendError / PrefixWindowGone if the state cannot be used (the slot is then empty)."""
        data = self.store.load(op.key)
        if data is None:
            raise SavedPrefixGone(f"saved prefix state {op.key[:12]} is gone")
        self._backend.restore_sequence(op.slot_id, data)
        self._backend.apply_kv_ops([KvTrim(op.slot_id, op.num_tokens)])

    def save_evaluated_prompts(self, plan: StepPlan) -> None:
        """Call after the step's update: slots whose prompt just finished hold exactly it.
        Failures are logged, never raised."""
        for chunk in plan.chunks:
            if not (chunk.is_prompt and chunk.wants_logits):
                continue
            prompt, namespace = chunk.request.prompt_token_ids, chunk.request.cache_namespace
            if len(prompt) < self.store.min_tokens:
                continue
            try:
                if not self.store.covers(prompt, namespace):  # asked first: copying the state out costs time
                    self.store.save(prompt, self._backend.save_sequence(chunk.slot_id), namespace)
            except Exception:
                log.exception("saving a prefix state failed")
