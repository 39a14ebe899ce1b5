"""A scripted stand-in for llama.cpp, for scheduler and core tests without a model."""
from __future__ import annotations

from localllm.engine.scheduler import BatchChunk
from localllm.engine.slots import KvCopy, KvOp, KvTrim

EOS = 0


def piece(token_id: int) -> bytes:
    """Token n renders as 't<n> ' except a few multi-byte and special ones."""
    specials = {EOS: b"", 1: b"\xf0\x9f", 2: b"\x98\x80", 3: "中".encode(), 4: b"ST", 5: b"OP"}
    return specials.get(token_id, f"t{token_id} ".encode())


def is_eog(token_id: int) -> bool:
    return token_id == EOS


class FakeBackend:
    """Keeps per-sequence KV contents as token lists and returns scripted tokens."""

    def __init__(self, script: dict[str, list[int]] | None = None, default_token: int = 7) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.default_token = default_token
        self.kv: dict[int, list[int]] = {}
        self.samplers: set[str] = set()
        self.decoded_batches: list[list[BatchChunk]] = []
        self.fail_next_decode = False
        self.closed = False

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return ([99] if add_special else []) + [100 + ord(c) % 50 for c in text]

    def token_piece(self, token_id: int) -> bytes:
        return piece(token_id)

    def is_end_of_generation(self, token_id: int) -> bool:
        return is_eog(token_id)

    def add_sampler(self, request_id: str, params) -> None:
        self.samplers.add(request_id)

    def remove_sampler(self, request_id: str) -> None:
        self.samplers.discard(request_id)

    def apply_kv_ops(self, ops: list[KvOp]) -> None:
        for op in ops:
            if isinstance(op, KvTrim):
                self.kv[op.slot_id] = self.kv.get(op.slot_id, [])[: op.start]
            elif isinstance(op, KvCopy):
                self.kv[op.dst_slot_id] = self.kv.get(op.src_slot_id, [])[: op.num_tokens]

    def decode(self, chunks: list[BatchChunk]) -> dict[str, int]:
        if self.fail_next_decode:
            self.fail_next_decode = False
            raise RuntimeError("scripted decode failure")
        self.decoded_batches.append(list(chunks))
        out = {}
        for chunk in chunks:
            seq = self.kv.setdefault(chunk.slot_id, [])
            assert len(seq) == chunk.start_pos, f"position gap in seq {chunk.slot_id}"
            seq.extend(chunk.token_ids)
            if chunk.wants_logits:
                queue = self.script.get(chunk.request.request_id)
                out[chunk.request.request_id] = queue.pop(0) if queue else self.default_token
        return out

    def take_logprobs(self) -> dict:
        return {}

    def close(self) -> None:
        self.closed = True
