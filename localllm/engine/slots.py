"""Slots: one llama.cpp sequence each (slot id == seq_id).

A slot keeps its KV contents after its request ends, so a later request with
the same prefix can reuse it; that is the prefix cache (in memory). Saved states on
disk are the prefix states (engine/prefix_states.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from localllm.engine.prefix import common_prefix_len, kv_cells_in_use
from localllm.engine.request import Request


@dataclass(eq=False, slots=True)
class Slot:
    slot_id: int
    cached_token_ids: list[int] = field(default_factory=list)
    """Exactly the tokens in this sequence's KV cells, positions 0..n-1."""
    request: Request | None = None
    last_used_s: float = 0.0
    cache_namespace: str = ""
    """Whose tokens these are: reused only by requests of the same namespace."""

    @property
    def is_free(self) -> bool:
        return self.request is None


@dataclass(frozen=True, slots=True)
class KvCopy:
    """Share the source sequence's cells for positions [0, num_tokens) with dst."""

    src_slot_id: int
    dst_slot_id: int
    num_tokens: int


@dataclass(frozen=True, slots=True)
class KvTrim:
    """Remove the slot's cells from position `start` on."""

    slot_id: int
    start: int


KvOp = KvCopy | KvTrim
"""What the backend applies (`apply_kv_ops`)."""


@dataclass(frozen=True, slots=True)
class KvRestore:
    """Replace the slot's cells with the saved prefix state `key` (on disk), keeping positions
    [0, num_tokens). Applied through the prefix-state store, not the backend."""

    slot_id: int
    key: str
    num_tokens: int


class SlotTable:
    """The fixed set of slots and which request holds each."""

    def __init__(self, num_slots: int) -> None:
        self.slots = [Slot(i) for i in range(num_slots)]

    def free_slots(self) -> list[Slot]:
        return [s for s in self.slots if s.is_free]

    def assign(self, request: Request) -> tuple[Slot, list[KvOp], int]:
        """Gives `request` a free slot primed with the longest cached prefix of its prompt.

        Changes state: the slot's request and cached tokens. Returns the slot, the
        KV operations the backend must apply before the next decode, and the
        number of prompt tokens reused. At least one prompt token is always left
        to evaluate, so the request gets fresh logits.
        """
        prompt = request.prompt_token_ids
        limit = len(prompt) - 1
        free = self.free_slots()
        assert free, "assign() needs a free slot"
        namespace = request.cache_namespace
        own = {s.slot_id: self._shared(s, prompt, namespace, limit) for s in free}
        # Prefer the free slot that already holds the most; among equals, the least recently used.
        target = max(free, key=lambda s: (own[s.slot_id], -s.last_used_s))
        reuse = own[target.slot_id]
        source = None
        for slot in self.slots:
            if slot is target:
                continue
            shared = self._shared(slot, prompt, namespace, limit)
            if shared > reuse:
                source, reuse = slot, shared
        if source is None:
            ops: list[KvOp] = [KvTrim(target.slot_id, reuse)]
        else:
            ops = [KvTrim(target.slot_id, 0), KvCopy(source.slot_id, target.slot_id, reuse)]
        target.cached_token_ids = prompt[:reuse]
        target.cache_namespace = namespace
        target.request = request
        target.last_used_s = time.monotonic()
        return target, ops, reuse

    @staticmethod
    def _shared(slot: Slot, prompt: list[int], namespace: str, limit: int) -> int:
        """Prompt tokens `slot` could give, at most `limit`; none across namespaces."""
        if slot.cache_namespace != namespace:
            return 0
        return min(common_prefix_len(slot.cached_token_ids, prompt), limit)

    def release(self, slot_id: int) -> None:
        """Frees the slot; its cached tokens stay for prefix reuse. Changes state."""
        slot = self.slots[slot_id]
        slot.request = None
        slot.last_used_s = time.monotonic()

    def forget(self, slot_id: int) -> KvTrim:
        """Drops the slot's cached tokens; returns the KV op that frees its cells."""
        self.slots[slot_id].cached_token_ids = []
        return KvTrim(slot_id, 0)

    def forget_idle(self) -> list[KvTrim]:
        """Drops every free slot's cached prefix (to make KV room); returns the ops that free the cells."""
        return [self.forget(s.slot_id) for s in self.slots if s.is_free and s.cached_token_ids]

    def num_kv_cells_used(self) -> int:
        return kv_cells_in_use([s.cached_token_ids for s in self.slots])

    def check_integrity(self) -> None:
        """Asserts the table is consistent; used by tests."""
        for slot in self.slots:
            req = slot.request
            if req is not None:
                assert req.slot_id == slot.slot_id, (req.slot_id, slot.slot_id)
                assert req.cache_namespace == slot.cache_namespace
                assert not req.is_finished
                prompt_part = req.prompt_token_ids[: req.num_computed_tokens]
                assert slot.cached_token_ids[: len(prompt_part)] == prompt_part
