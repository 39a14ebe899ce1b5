"""Chat-path results and events in OpenAI's wire format: chat.completion(.chunk) choices, with
reasoning_content and tool_calls, and text_completion choices."""
from __future__ import annotations

from localllm.chat.types import ReasoningDelta, TextDelta, ToolCall, ToolCallArguments, ToolCallStarted
from localllm.server.chat_path import ChatCall, ChatEvent, ChoiceResult, Finished
from localllm.types import TokenLogprob


class Format:
    object_name: str
    chunk_object_name: str

    def full_choice(self, result: ChoiceResult) -> dict: ...
    def first_chunk_choice(self, index: int) -> dict | None: ...
    def delta_choice(self, index: int, event: ChatEvent, logprobs: list[TokenLogprob] | None) -> dict | None:
        """The chunk choice an event makes; None for an event this format does not send."""


class ChatFormat(Format):
    object_name, chunk_object_name = "chat.completion", "chat.completion.chunk"

    def __init__(self, call: ChatCall, *, legacy_functions: bool = False) -> None:
        self._call = call
        self._legacy = legacy_functions
        """The request used `functions`: calls answer as `function_call` (one call), as OpenAI's did."""

    def full_choice(self, result: ChoiceResult) -> dict:
        message: dict = {"role": "assistant",
                         "content": None if result.tool_calls and not result.content else result.content}
        if result.reasoning is not None:
            message["reasoning_content"] = result.reasoning
        finish_reason = result.finish_reason
        if result.tool_calls and self._legacy:
            call = result.tool_calls[0]
            message["function_call"] = {"name": call.name, "arguments": call.arguments}
            finish_reason = "function_call" if finish_reason == "tool_calls" else finish_reason
        elif result.tool_calls:
            message["tool_calls"] = [_tool_call(call) for call in result.tool_calls]
        return {"index": result.index, "message": message, "logprobs": self._logprobs(result.logprobs),
                "finish_reason": finish_reason}

    def _logprobs(self, entries: list[TokenLogprob] | None) -> dict | None:
        if entries is None:
            return None
        return {"content": [{**self._token(e.token_id, e.logprob),
                             "top_logprobs": [self._token(t, lp) for t, lp in e.top]} for e in entries]}

    def _token(self, token_id: int, logprob: float) -> dict:
        raw = self._call.token_bytes(token_id)
        return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}

    def first_chunk_choice(self, index: int) -> dict:
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}

    def delta_choice(self, index: int, event: ChatEvent, logprobs: list[TokenLogprob] | None) -> dict | None:
        finish_reason = None
        if isinstance(event, Finished):
            delta: dict | None = {}
            finish_reason = event.finish_reason
            if self._legacy and finish_reason == "tool_calls":
                finish_reason = "function_call"
        else:
            delta = self._delta(event)
        if delta is None:
            return None
        return {"index": index, "delta": delta, "logprobs": self._logprobs(logprobs), "finish_reason": finish_reason}

    def _delta(self, event: ChatEvent) -> dict | None:
        """OpenAI's stream deltas: a call's first fragment carries index, id, type and name (with
        empty arguments), the next ones only index and argument pieces, which is how the SDK's
        stream helpers and LangChain's chunk merging put calls back together."""
        if isinstance(event, TextDelta):
            return {"content": event.text}
        if isinstance(event, ReasoningDelta):
            return {"reasoning_content": event.text}
        if self._legacy and isinstance(event, (ToolCallStarted, ToolCallArguments)):
            if event.index:
                return None  # the legacy shape has room for one call
            if isinstance(event, ToolCallStarted):
                return {"function_call": {"name": event.name, "arguments": ""}}
            return {"function_call": {"arguments": event.text}}
        if isinstance(event, ToolCallStarted):
            return {"tool_calls": [{"index": event.index, "id": event.id, "type": "function",
                                    "function": {"name": event.name, "arguments": ""}}]}
        if isinstance(event, ToolCallArguments):
            return {"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]}
        return None


def _tool_call(call: ToolCall) -> dict:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


class CompletionFormat(Format):
    object_name, chunk_object_name = "text_completion", "text_completion"

    def __init__(self, call: ChatCall) -> None:
        self._call = call

    def full_choice(self, result: ChoiceResult) -> dict:
        prefix = self._call.prompt_text(result.index) if self._call.echo else ""
        return {"index": result.index, "text": prefix + result.content,
                "logprobs": self._logprobs(result.logprobs, len(prefix)),
                "finish_reason": result.finish_reason}

    def _logprobs(self, entries: list[TokenLogprob] | None, offset: int = 0) -> dict | None:
        """OpenAI's legacy completions shape: parallel lists."""
        if entries is None:
            return None
        tokens = [self._text(e.token_id) for e in entries]
        offsets = []
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{self._text(t): lp for t, lp in e.top} for e in entries], "text_offset": offsets}

    def _text(self, token_id: int) -> str:
        return self._call.token_bytes(token_id).decode("utf-8", "replace")

    def first_chunk_choice(self, index: int) -> dict | None:
        if not self._call.echo:
            return None
        return {"index": index, "text": self._call.prompt_text(index), "logprobs": None, "finish_reason": None}

    def delta_choice(self, index: int, event: ChatEvent, logprobs: list[TokenLogprob] | None) -> dict | None:
        if isinstance(event, TextDelta):
            text, finish_reason = event.text, None
        elif isinstance(event, Finished):
            text, finish_reason = "", event.finish_reason
        else:
            return None
        return {"index": index, "text": text, "logprobs": self._logprobs(logprobs), "finish_reason": finish_reason}
