"""What the engine needs from its backend and its prefix-state store: one contract per role.

`LlamaBackend` (engine/llama_backend) and the scripted `FakeBackend` (tests/unit/fakes.py)
implement `ModelBackend`; `PrefixStateDiskStore` (cache/prefix_states.py) implements `PrefixStateStore`.
tests/unit/test_contracts.py checks that every member exists with a compatible signature.

Each method says which thread may call it, what it changes and what it raises. The
errors are declared, with what state they leave behind, in engine/errors.py.
Standard library only: the server and the pure engine modules import this freely.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from localllm.chat.families import Family
    from localllm.chat.types import ToolChoice, ToolSpec
    from localllm.constraints import Grammar
    from localllm.engine.scheduler import BatchChunk
    from localllm.engine.slots import KvOp
    from localllm.types import SamplingParams, TokenLogprob


class Vocabulary(Protocol):
    """The model's immutable vocabulary. Any thread; nothing here changes state (caches aside)."""

    num_vocab: int
    """Token ids are 0 .. num_vocab - 1; any other id would make llama.cpp abort the process."""

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`; `add_special` adds BOS, `parse_special` maps control-token text
        to control tokens (never set it for user text). Raises nothing."""
        ...

    def token_piece(self, token_id: int) -> bytes:
        """The bytes one token renders to (control tokens: b""); may end inside a UTF-8
        character. `token_id` must be in the vocabulary."""
        ...

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """The text of several tokens, invalid UTF-8 replaced."""
        ...

    def is_end_of_generation(self, token_id: int) -> bool:
        """True for EOS / end-of-turn tokens: drawing one ends the request (unless ignore_eos)."""
        ...

    def bos_text(self) -> str:
        """The BOS token's text ("" if the model has none), for chat templates."""
        ...

    def eos_text(self) -> str:
        """The EOS token's text ("" if the model has none), for chat templates."""
        ...


class StepBackend(Protocol):
    """What `EngineCore` drives: KV cells per slot (slot id == sequence id), one sampler per
    running request, one decode per step. Engine thread only."""

    def add_sampler(self, request_id: str, params: SamplingParams) -> None:
        """Builds the request's sampler (and notes whether it wants logprobs).

        Changes: the sampler table. Raises InvalidParam or BackendError if the parameters
        cannot be honoured (e.g. a grammar llama.cpp refuses); then nothing was added."""
        ...

    def remove_sampler(self, request_id: str) -> None:
        """Frees the request's sampler; a no-op for an unknown id. Raises nothing."""
        ...

    def apply_kv_ops(self, ops: Sequence[KvOp]) -> None:
        """Applies copies and trims to the KV cells, in order.

        Changes: the cells of the ops' sequences. Raises PrefixWindowGone or BackendError
        when an op cannot be applied exactly: that op's destination sequence is then empty,
        the ops before it stay applied and the ops after it are not applied."""
        ...

    def decode(self, chunks: Sequence[BatchChunk]) -> Mapping[str, int]:
        """One llama_decode over the chunks, then one sampled token per chunk that wants logits.

        Returns request id -> sampled token. Changes: each chunk's sequence gains its tokens,
        each sampling request's sampler accepts its token, logprobs are kept for
        `take_logprobs`. Raises NoKvRoom when the cells run out (nothing changed, see
        errors.py); any other exception leaves the chunks' sequences and samplers unknown:
        the caller must fail those requests and empty their sequences."""
        ...

    def take_logprobs(self) -> Mapping[str, TokenLogprob]:
        """Logprobs from the last decode for requests that asked; hands them over (cleared)."""
        ...


class SequenceStates(Protocol):
    """Saving and restoring one sequence's KV cells (prefix states on disk). Engine thread only."""

    def save_sequence(self, seq_id: int) -> bytes:
        """The serialised KV state of one sequence. Changes nothing; raises BackendError."""
        ...

    def restore_sequence(self, seq_id: int, data: bytes) -> int:
        """Replaces the sequence's cells with a saved state; returns how many tokens it holds.

        Changes: that sequence's cells. Raises BackendError (the sequence is then empty)."""
        ...

    def apply_kv_ops(self, ops: Sequence[KvOp]) -> None:
        """As `StepBackend.apply_kv_ops` (trims a restored state to the reusable length)."""
        ...

    def state_format(self) -> str:
        """What a saved state depends on besides the model file (context layout, KV type):
        states saved under another format must never be restored. Pure."""
        ...


class ModelBackend(Vocabulary, StepBackend, SequenceStates, Protocol):
    """One loaded model and its context: what `AsyncEngine` and the model loader hold."""

    num_ctx: int
    """KV cells in all, shared by every slot."""
    max_embedding_tokens: int
    """The longest input `embed` takes."""
    layer_split: dict[str, int]
    """Layers per device label when the model is split over RPC servers; {} otherwise."""

    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as text (e.g. "tokenizer.chat_template"), None if absent.
        Untrusted model input: bound what you do with it. Any thread."""
        ...

    def describe(self) -> str:
        """A one-line description of the model (architecture, size, quantisation). Any thread."""
        ...

    def compile_grammar(self, grammar: Grammar) -> None:
        """Parses the grammar once (by digest) and keeps the compiled form that add_sampler
        clones for each request. Raises InvalidParam if llama.cpp refuses it. Any thread (a
        worker: the engine thread then never parses); keeps a bounded number of grammars."""
        ...

    def json_grammar(self, schema: dict | None) -> Grammar:
        """Bounded GBNF for any JSON object (`schema` None) or one matching `schema`
        (localllm.constraints checks the schema before any grammar exists). Raises
        InvalidParam (param response_format) for a schema past the bounds or one it cannot
        translate. Pure, but blocking: call it from a worker thread."""
        ...

    def tool_grammar(self, family: Family, tools: list[ToolSpec], choice: ToolChoice, parallel: bool,
                     response_schema: dict | None = None, *, starts_in_reasoning: bool = False) -> Grammar | None:
        """Bounded GBNF that writes the family's tool calls (localllm.tool_grammar): forced for
        tool_choice required / named, lazy (`Grammar.triggers`) for auto, None for none.
        Raises InvalidParam ("tools" naming the tool, "tool_choice", "response_format").
        Pure, but blocking: call it from a worker thread."""
        ...

    def embed(self, inputs: Sequence[Sequence[int]]) -> list:
        """Pooled, L2-normalised vectors, one per input (each at most max_embedding_tokens).

        Blocking; any thread but the engine's (a second context, created on first use).
        Raises BackendError."""
        ...

    def close(self) -> None:
        """Frees every sampler, the context and the model. Call once, after the engine
        thread stopped; nothing may be called afterwards."""
        ...


class PrefixStateStore(Protocol):
    """Prefix states: saved KV states (on disk) for one model and state format.

    `longest`, `load`, `covers` and `save` run on the engine thread and must not block on
    the disk for long (`save` only queues the write); failures are counted in `stats` and
    answered as misses, never raised."""

    min_tokens: int
    """Prompts shorter than this are neither saved nor restored."""

    def longest(self, prompt_ids: list[int], namespace: str = "") -> tuple[str, int] | None:
        """(entry key, tokens shared with the prompt) of the best stored prefix of at least
        min_tokens saved under `namespace` (a tenant: Request.cache_namespace), or None.
        Changes nothing but the in-memory index's freshness."""
        ...

    def load(self, key: str) -> bytes | None:
        """The state stored under `key`, or None (evicted, unreadable). Counts a restore."""
        ...

    def covers(self, prompt_ids: list[int], namespace: str = "") -> bool:
        """True if saving the prompt now adds little: a stored or queued prefix of `namespace`
        covers most of it, or the store cannot take it (off, or its bounded write queue full).
        Asked before the state is copied out of llama.cpp."""
        ...

    def save(self, token_ids: list[int], data: bytes, namespace: str = "") -> None:
        """Queues storing `data` as the state after `token_ids`, for requests of `namespace` only;
        returns at once."""
        ...

    def stats(self) -> dict:
        """Counters and health for /v1/stats: active, error, entries, saved, restored, errors."""
        ...

    def close(self) -> None:
        """Waits for queued writes, then closes the store. Any thread; once, at shutdown."""
        ...
