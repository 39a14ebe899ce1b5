"""Chat results and output events -> OpenAI Responses objects and stream events (pure, no I/O).

The stream follows OpenAI's sequence, which the openai SDK's `responses.stream()` helper checks:
response.created, response.in_progress, then per output item output_item.added, (for a message)
content_part.added, output_text.delta..., output_text.done, content_part.done, (for a call)
function_call_arguments.delta..., .done, then output_item.done; last response.completed (or
response.incomplete at max_output_tokens, response.failed on an engine error). Every event
carries a sequence_number counting from 0.
"""
from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING

from localllm.chat.types import OutputEvent, ReasoningDelta, TextDelta, ToolCallArguments, ToolCallStarted

if TYPE_CHECKING:
    from localllm.server.chat_path import ChoiceResult, Usage


def new_id(prefix: str) -> str:
    """OpenAI-looking ids: resp_..., msg_..., fc_..., rs_... (random, not guessable: a stored
    response is read back by its id)."""
    return f"{prefix}_{secrets.token_hex(24)}"


def usage_object(usage: Usage) -> dict:
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": usage.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def response_object(response_id: str, created_at: int, model: str, echo: dict, *, status: str, output: list[dict],
                    usage: Usage | None = None, error: dict | None = None) -> dict:
    """A Response: `echo` holds the request fields it repeats (responses_input.parse_request)."""
    done = status in ("completed", "incomplete", "failed")
    return {"id": response_id, "object": "response", "created_at": created_at, "status": status,
            "background": False, "completed_at": int(time.time()) if done else None, "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            **echo, "model": model, "output": output, "service_tier": "default",
            "usage": usage_object(usage) if usage is not None else None}


def status_of(finish_reason: str) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def message_item(item_id: str, text: str, status: str) -> dict:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [_text_part(text)] if status != "in_progress" else []}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def reasoning_item(item_id: str, text: str, status: str) -> dict:
    return {"id": item_id, "type": "reasoning", "status": status, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}] if status != "in_progress" else []}


def _where(item: dict) -> dict:
    return {"item_id": item["id"], "output_index": item["index"]}


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def output_items(result: ChoiceResult) -> list[dict]:
    """A whole answer's items: reasoning, the message (unless only whitespace beside tool calls),
    then one function_call per call."""
    status = status_of(result.finish_reason)
    items = []
    if result.reasoning:
        items.append(reasoning_item(new_id("rs"), result.reasoning, "completed"))
    if result.content.strip() or not result.tool_calls:
        items.append(message_item(new_id("msg"), result.content, status))
    items += [function_call_item(new_id("fc"), call.id, call.name, call.arguments, "completed")
              for call in result.tool_calls]
    return items


class StreamTranslator:
    """One streamed answer's output events -> Responses stream events (dicts with type and
    sequence_number). `output` holds the finished items; `response` the final Response."""

    def __init__(self, response_id: str, created_at: int, model: str, echo: dict) -> None:
        self._meta = (response_id, created_at, model, echo)
        self._next_seq = 0
        self.output: list[dict] = []
        self.response: dict | None = None
        self._open: dict | None = None
        """The item being streamed: kind, id, output index, its deltas (`parts`, joined into `text` at the
        close), call_id and name for a call."""
        self._pending: list[str] = []
        """Whitespace the model wrote before anything else: held, so a call's stray newline does not
        become an empty message item."""

    def started(self) -> list[dict]:
        snapshot = self._response("in_progress", [])
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot)]

    def feed(self, event: OutputEvent) -> list[dict]:
        if isinstance(event, TextDelta):
            return self._text(event.text)
        if isinstance(event, ReasoningDelta):
            events = self._switch_to("reasoning")
            return events + self._delta("response.reasoning_text.delta", event.text, content_index=0)
        if isinstance(event, ToolCallStarted):
            self._pending = []
            events = self._close("completed")
            return events + self._open_item("function_call", call_id=event.id, name=event.name)
        if isinstance(event, ToolCallArguments):
            return self._delta("response.function_call_arguments.delta", event.text)
        return []

    def finished(self, finish_reason: str, usage: Usage) -> list[dict]:
        status = status_of(finish_reason)
        events = []
        if not self.output and self._open is None:  # nothing but whitespace (or nothing): still one message
            held = "".join(self._pending)
            events += self._open_item("message") + self._delta("response.output_text.delta", held, content_index=0)
        events += self._close(status)
        self.response = self._response(status, self.output, usage)
        return events + [self._event(f"response.{status}", response=self.response)]

    def failed(self, message: str) -> list[dict]:
        events = self._close("incomplete")
        error = {"code": "server_error", "message": message}
        self.response = self._response("failed", self.output, error=error)
        return events + [self._event("response.failed", response=self.response)]

    def _text(self, text: str) -> list[dict]:
        if self._open is None or self._open["kind"] != "message":
            if not text.strip():  # what is held is whitespace too
                self._pending.append(text)
                return []
            text, self._pending = "".join(self._pending) + text, []
            events = self._switch_to("message")
        else:
            events = []
        return events + self._delta("response.output_text.delta", text, content_index=0, logprobs=[])

    def _switch_to(self, kind: str) -> list[dict]:
        if self._open is not None and self._open["kind"] == kind:
            return []
        return self._close("completed") + self._open_item(kind)

    def _open_item(self, kind: str, call_id: str = "", name: str = "") -> list[dict]:
        prefix = {"message": "msg", "reasoning": "rs", "function_call": "fc"}[kind]
        item = self._open = {"kind": kind, "id": new_id(prefix), "index": len(self.output), "text": "",
                             "parts": [], "call_id": call_id, "name": name}
        events = [self._event("response.output_item.added", output_index=item["index"],
                              item=self._item(item, "in_progress"))]
        if kind != "function_call":
            events.append(self._event("response.content_part.added", **_where(item), content_index=0,
                                      part=self._part(item, "")))
        return events

    def _delta(self, kind: str, text: str, **extra: object) -> list[dict]:
        if self._open is None or not text:
            return []
        self._open["parts"].append(text)  # joined once, at the close: no copy of the text so far per delta
        return [self._event(kind, **_where(self._open), delta=text, **extra)]

    def _close(self, status: str) -> list[dict]:
        item, self._open = self._open, None
        if item is None:
            return []
        where, text = _where(item), "".join(item["parts"])
        item["text"] = text
        if item["kind"] == "function_call":
            events = [self._event("response.function_call_arguments.done", **where, name=item["name"], arguments=text)]
        else:
            done = "response.output_text.done" if item["kind"] == "message" else "response.reasoning_text.done"
            extra = {"logprobs": []} if item["kind"] == "message" else {}
            events = [self._event(done, **where, content_index=0, text=text, **extra),
                      self._event("response.content_part.done", **where, content_index=0, part=self._part(item, text))]
        finished = self._item(item, status if item["kind"] == "message" else "completed")
        self.output.append(finished)
        return events + [self._event("response.output_item.done", output_index=item["index"], item=finished)]

    @staticmethod
    def _part(item: dict, text: str) -> dict:
        return _text_part(text) if item["kind"] == "message" else {"type": "reasoning_text", "text": text}

    @staticmethod
    def _item(item: dict, status: str) -> dict:
        if item["kind"] == "function_call":
            arguments = item["text"] if status != "in_progress" else ""
            return function_call_item(item["id"], item["call_id"], item["name"], arguments, status)
        build = message_item if item["kind"] == "message" else reasoning_item
        return build(item["id"], item["text"], status)

    def _response(self, status: str, output: list[dict], usage: Usage | None = None,
                  error: dict | None = None) -> dict:
        response_id, created_at, model, echo = self._meta
        return response_object(response_id, created_at, model, echo, status=status, output=list(output),
                               usage=usage, error=error)

    def _event(self, kind: str, **fields: object) -> dict:
        event = {"type": kind, "sequence_number": self._next_seq, **fields}
        self._next_seq += 1
        return event
