"""One open request on the chat path (server/chat_path.py): the events and results adapters map
to their wire formats. Protocol-neutral: no wire format here."""
from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from localllm.chat.output import OutputParser, fold
from localllm.chat.types import OutputEvent, TextDelta, ToolCall, ToolCallStarted
from localllm.models.manager import LoadedModel
from localllm.server.errors import CLIENT_CLOSED, ApiError, client_gone
from localllm.server.generation import Choice
from localllm.server.schemas import GenerationRequest
from localllm.types import FinishReason, TokenDelta, TokenLogprob


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: str
    """"stop", "length" or "tool_calls" (OpenAI's words)."""
    stop_sequence: str | None = None
    """The stop string that ended the answer ("stop" by a stop string, not by end of generation)."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The engine failed (500) or the server aborted (503) a choice mid-answer."""

    message: str
    status: int


@dataclass(frozen=True, slots=True)
class Logprobs:
    """Log probabilities of the tokens behind the text events that follow. Sent only when the
    body asked for logprobs (OpenAI's `logprobs`); other adapters never see one."""

    entries: tuple[TokenLogprob, ...]


ChatEvent = OutputEvent | Logprobs | Finished | Failed


@dataclass(slots=True)
class ChoiceResult:
    index: int
    content: str
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    """None only when the client went away before the choice finished."""
    logprobs: list[TokenLogprob] | None = None
    """Set when the body asked for logprobs."""
    stop_sequence: str | None = None
    """As Finished.stop_sequence."""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    """Each prompt counted once, however many (n) choices sample from it."""
    completion_tokens: int
    cached_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class ChoiceStats:
    """One choice's counts and timings (Ollama reports them as durations)."""

    num_prompt_tokens: int
    num_cached_tokens: int
    num_generated_tokens: int
    prompt_s: float | None
    """From queueing to the first generated token (prompt evaluation); None if none came."""
    generation_s: float
    """From the first generated token to the last."""


class ChatCall:
    """An open chat or completion request: read `events()` or `collect()` once, then `usage()`."""

    def __init__(self, request: web.Request, model: LoadedModel, gen: GenerationRequest,
                 source: AsyncIterator[tuple[int, TokenDelta]], choices: list[Choice], headers: dict[str, str], *,
                 kind: str, started_s: float, load_s: float, parsers: list[OutputParser] | None = None) -> None:
        self.id = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model.name
        self.num_choices = len(choices)
        self.n = gen.n
        """Choices per prompt."""
        self.stream = gen.stream
        self.include_usage = gen.include_usage
        self.echo = gen.echo
        self.headers = headers
        """Rate-limit headers and X-LocalLLM-Cache: put them on the response."""
        self.started_s = started_s
        """time.monotonic() when the model was leased and the request queued."""
        self.load_s = load_s
        """Seconds spent finding (and, if needed, loading) the model."""
        self._request = request
        self._engine = model.engine
        self._prompts = gen.prompts
        self._wants_logprobs = gen.params.logprobs is not None
        self._source = source
        self._choices = choices
        self._parsers = parsers
        """One per choice (chat: reasoning and tool calls); None: the text as it comes (completions)."""
        self._num_calls = [0] * len(choices)
        self._read = False

    async def events(self) -> AsyncIterator[tuple[int, ChatEvent]]:
        """(choice index, event) as they come; each choice ends with Finished or Failed. Stops
        early when the client has gone (the path's exit aborts the rest)."""
        if self._read:
            raise RuntimeError("a call's events can be read once")
        self._read = True
        async for index, delta in self._source:
            self._choices[index].absorb(delta)
            if self._wants_logprobs and delta.logprobs:
                yield index, Logprobs(tuple(delta.logprobs))
            for event in self._parsed(index, delta):
                yield index, event
            if client_gone(self._request):
                self._request[CLIENT_CLOSED] = True
                return

    def _parsed(self, index: int, delta: TokenDelta) -> list[ChatEvent]:
        parser = self._parsers[index] if self._parsers is not None else None
        events: list[ChatEvent] = []
        if delta.text:
            events += parser.feed(delta.text) if parser is not None else [TextDelta(delta.text)]
        if delta.finish_reason is not None and parser is not None:
            events += parser.close()
        self._num_calls[index] += sum(isinstance(e, ToolCallStarted) for e in events)
        if delta.finish_reason is None:
            return events
        return [*events, _ending(delta, self._num_calls[index])]

    async def collect(self) -> list[ChoiceResult]:
        """Every choice's whole answer; a Failed choice raises ApiError (500 or 503)."""
        results = [ChoiceResult(i, "", logprobs=[] if self._wants_logprobs else None)
                   for i in range(self.num_choices)]
        outputs: list[list[OutputEvent]] = [[] for _ in results]
        async for index, event in self.events():
            result = results[index]
            if isinstance(event, Logprobs):
                result.logprobs.extend(event.entries)
            elif isinstance(event, Finished):
                result.finish_reason, result.stop_sequence = event.finish_reason, event.stop_sequence
            elif isinstance(event, Failed):
                raise ApiError(event.status, event.message, type="server_error")
            else:
                outputs[index].append(event)
        for result, output in zip(results, outputs):
            folded = fold(output)
            result.content, result.reasoning, result.tool_calls = (folded.content, folded.reasoning or None,
                                                                   folded.tool_calls)
        return results

    def usage(self) -> Usage:
        firsts = self._choices[::self.n]
        return Usage(prompt_tokens=sum(c.num_prompt_tokens for c in firsts),
                     completion_tokens=sum(c.num_generated_tokens for c in self._choices),
                     cached_tokens=sum(c.num_cached_tokens for c in firsts))

    def stats(self) -> list[ChoiceStats]:
        return [ChoiceStats(c.num_prompt_tokens, c.num_cached_tokens, c.num_generated_tokens,
                            None if c.first_token_s is None else c.first_token_s - self.started_s,
                            0.0 if c.first_token_s is None else c.last_token_s - c.first_token_s)
                for c in self._choices]

    def first_token_s(self) -> float | None:
        """time.monotonic() of the first token of any choice."""
        firsts = [c.first_token_s for c in self._choices if c.first_token_s is not None]
        return min(firsts) if firsts else None

    def token_bytes(self, token_id: int) -> bytes:
        """A token's bytes (for logprobs in OpenAI's shape)."""
        return self._engine.token_bytes(token_id)

    def prompt_text(self, index: int) -> str:
        """The prompt of choice `index` as text (completions' echo)."""
        prompt = self._prompts[index // self.n]
        return prompt if isinstance(prompt, str) else self._engine.detokenize(prompt)

    async def aclose(self) -> None:
        """Called by the path on exit: stops reading the source."""
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()


def _ending(delta: TokenDelta, num_calls: int) -> Finished | Failed:
    if delta.finish_reason is FinishReason.ERROR:
        return Failed(delta.error or "The engine failed while generating.", 500)
    if delta.finish_reason is FinishReason.ABORT:
        return Failed(delta.error or "The request was cancelled by the server.", 503)
    if delta.finish_reason is FinishReason.STOP and num_calls:
        return Finished("tool_calls")
    return Finished(delta.finish_reason.value, delta.stop_sequence)
