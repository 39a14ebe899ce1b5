"""The scheduler: which tokens go into the next llama_decode, and what came out.

Pure bookkeeping, no llama.cpp: `schedule()` returns a `StepPlan`, the core
runs it, and `update()` turns the sampled tokens into `TokenDelta`s. Tests
drive it with a fake backend that returns scripted tokens.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from localllm.engine.request import Request, RequestState
from localllm.engine.slots import KvOp, KvRestore, KvTrim, SlotTable
from localllm.types import FinishReason, TokenDelta, TokenLogprob

SavedPrefix = Callable[[Request], tuple[str, int] | None]
"""(key, prompt tokens it covers) of a saved prefix state for the request (disk), or None."""


@dataclass(frozen=True, slots=True)
class BatchChunk:
    """Consecutive tokens of one request, at positions start_pos.. in its slot."""

    request: Request
    slot_id: int
    token_ids: list[int]
    start_pos: int
    wants_logits: bool
    """True on the request's last prompt chunk and on every decode token."""
    is_prompt: bool


@dataclass(slots=True)
class StepPlan:
    kv_ops: list[KvOp | KvRestore] = field(default_factory=list)
    """Put the admitted requests' prefixes in place: to apply, in order, before the decode
    (KvRestore through the prefix-state store, the rest through the backend)."""
    admitted: list[Request] = field(default_factory=list)
    """Requests that got a slot this step."""
    chunks: list[BatchChunk] = field(default_factory=list)
    """Decode tokens first, then prompt chunks, within n_batch tokens in all."""

    @property
    def num_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.chunks)

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.chunks if c.is_prompt)


class Scheduler:
    """Continuous batching over a fixed set of slots. Engine thread only."""

    def __init__(
        self,
        num_slots: int,
        num_batch_tokens: int,
        token_piece: Callable[[int], bytes],
        is_end_of_generation: Callable[[int], bool],
        saved_prefix: SavedPrefix | None = None,
    ) -> None:
        self.slot_table = SlotTable(num_slots)
        self.num_batch_tokens = num_batch_tokens
        self._token_piece = token_piece
        self._is_eog = is_end_of_generation
        self._saved_prefix = saved_prefix
        self.waiting: deque[Request] = deque()
        self.running: dict[str, Request] = {}
        """Requests holding a slot, in admission order (prefill goes first-come)."""

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def abort(self, request_id: str) -> TokenDelta | None:
        """Ends a waiting or running request now; its slot is free for the next step."""
        request = self.running.get(request_id)
        if request is None:
            request = next((r for r in self.waiting if r.request_id == request_id), None)
            if request is None:
                return None
            self.waiting.remove(request)
        return self._finish(request, FinishReason.ABORT, TokenDelta(request_id))

    def abort_all(self) -> list[TokenDelta]:
        """Ends every waiting and running request (shutdown)."""
        ids = [r.request_id for r in self.waiting] + list(self.running)
        return [d for d in map(self.abort, ids) if d is not None]

    def schedule(self) -> StepPlan:
        """Admits waiting requests and fills one batch (`admit` then `fill`). Changes state as they do."""
        return self.fill(self.admit())

    def admit(self) -> StepPlan:
        """Gives waiting requests free slots, each primed with its longest cached prefix: a live
        slot's (copied) or, when longer, a saved state's (restored).

        Changes state: admitted requests get slots and PREFILL state, their slots the prefix.
        The plan's kv_ops must be applied before the batch is decoded; a prefix that cannot
        be put in place goes through `start_cold`."""
        plan = StepPlan()
        while self.waiting and self.slot_table.free_slots():
            request = self.waiting.popleft()
            slot, ops, num_reused = self.slot_table.assign(request)
            saved = self._saved_prefix(request) if self._saved_prefix is not None else None
            if saved is not None and saved[1] > num_reused:
                key, num_reused = saved
                ops = [KvRestore(slot.slot_id, key, num_reused)]
                slot.cached_token_ids = request.prompt_token_ids[:num_reused]
            request.slot_id = slot.slot_id
            request.state = RequestState.PREFILL
            request.num_computed_tokens = request.num_reused_tokens = num_reused
            self.running[request.request_id] = request
            plan.kv_ops.extend(ops)
            plan.admitted.append(request)
        return plan

    def start_cold(self, plan: StepPlan, slot_ids: set[int]) -> list[KvTrim]:
        """The admitted requests in these slots evaluate their whole prompt: their prefix could not
        be put in place. Changes state (their reuse, the plan's chunks); returns the KV ops that
        empty the slots."""
        ops = [self.slot_table.forget(slot_id) for slot_id in sorted(slot_ids)]
        for request in plan.admitted:
            if request.slot_id in slot_ids:
                request.num_computed_tokens = request.num_reused_tokens = 0
        plan.chunks.clear()
        self.fill(plan)
        return ops

    def fill(self, plan: StepPlan) -> StepPlan:
        """One decode token per generating request, then prompt chunks, within n_batch."""
        budget = self.num_batch_tokens
        # Generating requests first, so running streams never stall behind a long prompt.
        for request in self.running.values():
            if request.state is RequestState.DECODE and budget > 0:
                pos = len(self.slot_table.slots[request.slot_id].cached_token_ids)
                plan.chunks.append(BatchChunk(request, request.slot_id, [request.output_token_ids[-1]], pos, True, False))
                budget -= 1
        # The rest goes to prompt chunks (chunked prefill), oldest request first.
        for request in self.running.values():
            if request.state is not RequestState.PREFILL or budget <= 0:
                continue
            start = request.num_computed_tokens
            end = min(request.num_prompt_tokens, start + budget)
            chunk = request.prompt_token_ids[start:end]
            plan.chunks.append(BatchChunk(request, request.slot_id, chunk, start, end == request.num_prompt_tokens, True))
            budget -= len(chunk)
        return plan

    def update(self, plan: StepPlan, sampled: Mapping[str, int],
               logprobs: Mapping[str, TokenLogprob] | None = None) -> list[TokenDelta]:
        """Records a decoded step; `sampled` maps request id to the token drawn from its logits row,
        `logprobs` (if any) request id to that token's logprobs.

        Changes state: slot caches grow by what was decoded, requests advance or finish.
        """
        deltas: list[TokenDelta] = []
        for chunk in plan.chunks:
            request = chunk.request
            self.slot_table.slots[chunk.slot_id].cached_token_ids.extend(chunk.token_ids)
            if chunk.is_prompt:
                request.num_computed_tokens += len(chunk.token_ids)
            if not chunk.wants_logits:
                continue
            request.state = RequestState.DECODE
            delta = self._accept_token(request, sampled[request.request_id])
            if logprobs and request.request_id in logprobs:
                delta.logprobs = [logprobs[request.request_id]]
            deltas.append(delta)
        return deltas

    def reject(self, request: Request, message: str) -> TokenDelta:
        """Ends a request that was never queued (e.g. its sampler could not be built)."""
        return self._finish(request, FinishReason.ERROR, TokenDelta(request.request_id, error=message))

    def fail(self, plan: StepPlan | None, message: str) -> tuple[list[TokenDelta], list[KvOp]]:
        """Ends the requests of a failed step: those the plan admitted or batched, or with no plan
        (the step failed before one existed) every running request.

        Changes state: their slots forget their (now unknown) KV contents, and with no plan every
        slot does. Returns the deltas and the KV ops that clear those cells."""
        if plan is None:
            requests = list(self.running.values())
            slot_ids = [s.slot_id for s in self.slot_table.slots]
        else:
            requests = list({r.request_id: r for r in (*plan.admitted, *(c.request for c in plan.chunks))}.values())
            slot_ids = [r.slot_id for r in requests if r.request_id in self.running]
        ops: list[KvOp] = [self.slot_table.forget(slot_id) for slot_id in slot_ids]
        deltas = [self._finish(r, FinishReason.ERROR, TokenDelta(r.request_id, error=message))
                  for r in requests if r.request_id in self.running]
        return deltas, ops

    def _accept_token(self, request: Request, token_id: int) -> TokenDelta:
        request.output_token_ids.append(token_id)
        delta = TokenDelta(request.request_id, token_ids=[token_id])
        if self._is_eog(token_id) and not request.params.ignore_eos:
            return self._finish(request, FinishReason.STOP, delta)
        delta.text = request.text.push(self._token_piece(token_id))
        if request.text.stopped:
            delta.stop_sequence = request.text.matched
            return self._finish(request, FinishReason.STOP, delta)
        if len(request.output_token_ids) >= request.max_new_tokens:
            return self._finish(request, FinishReason.LENGTH, delta)
        self._fill_counts(request, delta)
        return delta

    def _finish(self, request: Request, reason: FinishReason, delta: TokenDelta) -> TokenDelta:
        delta.text += request.text.flush()
        delta.finish_reason = reason
        request.finish_reason = reason
        request.state = RequestState.FINISHED
        if self.running.pop(request.request_id, None) is not None:
            self.slot_table.release(request.slot_id)
        self._fill_counts(request, delta)
        return delta

    @staticmethod
    def _fill_counts(request: Request, delta: TokenDelta) -> None:
        delta.num_prompt_tokens = request.num_prompt_tokens
        delta.num_cached_tokens = request.num_reused_tokens
        delta.num_generated_tokens = len(request.output_token_ids)
