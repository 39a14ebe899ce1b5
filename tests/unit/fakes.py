"""A scripted stand-in for llama.cpp, for scheduler and core tests without a model.

`FakeBackend` implements every member of `contracts.ModelBackend` (tests/unit/test_contracts.py)."""
from __future__ import annotations

import json
from collections.abc import Sequence

from localllm.chat.families import Family
from localllm.chat.types import ToolChoice, ToolSpec
from localllm.constraints import Grammar, check_schema
from localllm.engine.errors import BackendError, NoKvRoom
from localllm.engine.prefix import common_prefix_len
from localllm.engine.scheduler import BatchChunk
from localllm.engine.slots import KvCopy, KvOp, KvTrim
from localllm.tool_grammar import plan_tool_grammar
from localllm.types import InvalidParam, SamplingParams, TokenLogprob

EOS = 0
BOS = 99


def piece(token_id: int) -> bytes:
    """Token n renders as 't<n> ' except a few multi-byte and special ones."""
    specials = {EOS: b"", 1: b"\xf0\x9f", 2: b"\x98\x80", 3: "中".encode(), 4: b"ST", 5: b"OP"}
    return specials.get(token_id, f"t{token_id} ".encode())


def is_eog(token_id: int) -> bool:
    return token_id == EOS


class FakeBackend:
    """Keeps per-sequence KV contents as token lists and returns scripted tokens.

    `num_kv_cells` bounds the cells in use (copies counted as copies, unlike llama.cpp's
    shared cells): a decode that would pass it raises NoKvRoom and changes nothing."""

    num_vocab: int = 256
    max_embedding_tokens: int = 64

    def __init__(self, script: dict[str, list[int]] | None = None, default_token: int = 7,
                 num_kv_cells: int = 1 << 20) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.default_token = default_token
        self.num_ctx = num_kv_cells
        self.layer_split: dict[str, int] = {}
        self.kv: dict[int, list[int]] = {}
        self.samplers: set[str] = set()
        self.decoded_batches: list[list[BatchChunk]] = []
        self.fail_next_decode = False
        self.num_no_room = 0
        """NoKvRoom raised so far."""
        self.closed = False

    # -- vocabulary ---------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return ([BOS] if add_special else []) + [100 + ord(c) % 50 for c in text]

    def token_piece(self, token_id: int) -> bytes:
        return piece(token_id)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return b"".join(piece(t) for t in token_ids).decode("utf-8", "replace")

    def is_end_of_generation(self, token_id: int) -> bool:
        return is_eog(token_id)

    def bos_text(self) -> str:
        return "<bos>"

    def eos_text(self) -> str:
        return "<eos>"

    # -- model ----------------------------------------------------------------------

    def metadata(self, key: str) -> str | None:
        return {"general.architecture": "fake"}.get(key)

    def describe(self) -> str:
        return "fake scripted model"

    def compile_grammar(self, grammar: Grammar) -> None:
        if "root" not in grammar.text:
            raise InvalidParam("response_format", "the output grammar could not be parsed")

    def json_grammar(self, schema: dict | None) -> Grammar:
        if schema is not None:
            check_schema(schema)  # the same bounds as the real backend
        return Grammar('root ::= "{}"')

    def tool_grammar(self, family: Family, tools: list[ToolSpec], choice: ToolChoice, parallel: bool,
                     response_schema: dict | None = None, *, starts_in_reasoning: bool = False) -> Grammar | None:
        plan = plan_tool_grammar(family, tools, choice, parallel, response_schema,  # the real checks
                                 starts_in_reasoning=starts_in_reasoning)
        return None if plan is None else Grammar('root ::= "{}"', plan.triggers)

    def embed(self, inputs: Sequence[Sequence[int]]) -> list:
        return [[float(len(token_ids)), 1.0] for token_ids in inputs]

    def close(self) -> None:
        self.closed = True

    # -- samplers, KV cache, decode ----------------------------------------------------

    def add_sampler(self, request_id: str, params: SamplingParams) -> None:
        self.samplers.add(request_id)

    def remove_sampler(self, request_id: str) -> None:
        self.samplers.discard(request_id)

    def apply_kv_ops(self, ops: Sequence[KvOp]) -> None:
        for op in ops:
            if isinstance(op, KvTrim):
                self.kv[op.slot_id] = self.kv.get(op.slot_id, [])[: op.start]
            elif isinstance(op, KvCopy):
                self.kv[op.dst_slot_id] = self.kv.get(op.src_slot_id, [])[: op.num_tokens]

    def decode(self, chunks: Sequence[BatchChunk]) -> dict[str, int]:
        if self.fail_next_decode:
            self.fail_next_decode = False
            raise RuntimeError("scripted decode failure")
        if sum(map(len, self.kv.values())) + sum(len(c.token_ids) for c in chunks) > self.num_ctx:
            self.num_no_room += 1
            raise NoKvRoom("no free KV cells for this batch")
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

    def take_logprobs(self) -> dict[str, TokenLogprob]:
        return {}

    # -- sequence states ---------------------------------------------------------------

    def save_sequence(self, seq_id: int) -> bytes:
        return json.dumps(self.kv.get(seq_id, [])).encode()

    def restore_sequence(self, seq_id: int, data: bytes) -> int:
        try:
            self.kv[seq_id] = [int(t) for t in json.loads(data)]
        except (ValueError, TypeError) as exc:
            self.kv[seq_id] = []
            raise BackendError(f"could not restore a saved state into sequence {seq_id}") from exc
        return len(self.kv[seq_id])

    def state_format(self) -> str:
        return "fake:json"


class FakePrefixStore:
    """Saved prefix states in memory; implements `contracts.PrefixStateStore`."""

    def __init__(self, min_tokens: int = 8) -> None:
        self.min_tokens = min_tokens
        self.index: dict[str, list[int]] = {}
        self.namespaces: dict[str, str] = {}
        self.data: dict[str, bytes] = {}
        self.num_saved = self.num_restored = 0
        self.closed = False

    def longest(self, prompt_ids: list[int], namespace: str = "") -> tuple[str, int] | None:
        shared = {key: common_prefix_len(tokens, prompt_ids) for key, tokens in self.index.items()
                  if self.namespaces[key] == namespace}
        best = max(shared, key=shared.__getitem__, default=None)
        return (best, shared[best]) if best is not None and shared[best] >= self.min_tokens else None

    def load(self, key: str) -> bytes | None:
        data = self.data.get(key)
        self.num_restored += data is not None
        return data

    def covers(self, prompt_ids: list[int], namespace: str = "") -> bool:
        best = self.longest(prompt_ids, namespace)
        return best is not None and best[1] >= 0.9 * len(prompt_ids)

    def save(self, token_ids: list[int], data: bytes, namespace: str = "") -> None:
        key = (namespace + "|" if namespace else "") + ",".join(map(str, token_ids))
        self.index[key], self.data[key], self.namespaces[key] = list(token_ids), data, namespace
        self.num_saved += 1

    def evict_data(self) -> None:
        """The states go but the index still names them (another process cleared the store)."""
        self.data.clear()

    def stats(self) -> dict:
        return {"active": True, "error": None, "entries": len(self.index), "saved": self.num_saved,
                "restored": self.num_restored, "errors": 0}

    def close(self) -> None:
        self.closed = True
