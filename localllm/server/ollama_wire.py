"""Ollama's /api request bodies -> the OpenAI chat-completions body of the one request path, and
the path's results -> Ollama's replies. Pure: no aiohttp, no engine; every bad input is a 400
naming the field (rendered as Ollama's `{"error": ...}` by the error middleware)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from localllm.chat.calls import loads_or_none
from localllm.chat.messages import MAX_CHAT_MESSAGES, MAX_TOOL_CALLS_PER_MESSAGE
from localllm.chat.types import ToolCall
from localllm.server.errors import ApiError, bad_request
from localllm.server.schemas import _num, flag, keep_alive

NS = 1_000_000_000
"""Ollama reports every duration in nanoseconds."""
API_VERSION = "0.12.0"
"""The Ollama API level /api/version reports: clients gate features on it, not on localllm's own."""

_FLOAT_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "min_p": "min_p",
                  "repeat_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
                  "frequency_penalty": "frequency_penalty"}
"""Ollama option -> chat body field, for numbers."""
_INT_OPTIONS = {"top_k": "top_k", "seed": "seed", "num_predict": "max_tokens"}
_IGNORED_OPTIONS = {
    **dict.fromkeys(("num_keep", "num_batch", "num_gpu", "main_gpu", "num_thread", "repeat_last_n",
                     "mirostat"), int),
    **dict.fromkeys(("tfs_z", "typical_p", "mirostat_tau", "mirostat_eta"), float),
    **dict.fromkeys(("numa", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap", "use_mlock",
                     "embedding_only", "penalize_newline"), bool),
}
"""Options Ollama knows that the operator's configuration fixes here: type-checked, then ignored
(the server's threads, GPU layers, batch and memory are not a request's to change)."""
MAX_STOP_SEQUENCES = 16
ROLES = ("system", "user", "assistant", "tool")
THINK_LEVELS = ("low", "medium", "high")
LATEST = ":latest"


def parse_options(value: object) -> dict[str, Any]:
    """Ollama's `options` as chat body fields: known ones type-checked (as Ollama does: numbers for
    numbers, so 1.0 is an integer and "0.7" is not a float), unknown ones ignored, as Ollama ignores
    them. num_ctx is checked (a positive integer) and otherwise ignored: every request gets its
    slot's context."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request("options must be an object", "options")
    fields: dict[str, Any] = {}
    for name, option in value.items():
        if option is None:
            continue
        if name in _FLOAT_OPTIONS:
            fields[_FLOAT_OPTIONS[name]] = _number(name, option)
        elif name in _INT_OPTIONS:
            fields[_INT_OPTIONS[name]] = _integer(name, option)
        elif name == "stop":
            fields["stop"] = _stops(option)
        elif name == "num_ctx" and _integer(name, option) < 1:
            raise bad_request("options.num_ctx must be a positive number of tokens", "options")
        elif name in _IGNORED_OPTIONS:
            _check_type(name, option, _IGNORED_OPTIONS[name])
    if fields.get("seed", 0) < 0:  # Ollama's -1: a random seed
        del fields["seed"]
    if "max_tokens" in fields:
        fields["max_tokens"] = _num_predict(fields["max_tokens"])
    return {k: v for k, v in fields.items() if v is not None}


def _num_predict(value: int) -> int | None:
    if value < 0:  # -1: no limit, -2: fill the context; both end at the slot's context here
        return None
    if value == 0:
        raise bad_request("options.num_predict must be -1 (no limit), -2 (fill the context) or at least 1", "options")
    return value


def _number(name: str, value: object) -> float:
    """A finite JSON number (schemas' reader), its error naming options.NAME."""
    try:
        return _num({name: value}, name, 0.0)
    except ApiError as exc:
        raise bad_request(f"options.{exc.message}", "options") from None


def _integer(name: str, value: object) -> int:
    number = _number(name, value)
    if abs(number) > 2**63:
        raise bad_request(f"options.{name} is out of range", "options")
    return int(number)  # Ollama reads JSON numbers as float64 and truncates


def _check_type(name: str, value: object, kind: type) -> None:
    if kind is bool:
        if not isinstance(value, bool):
            raise bad_request(f"options.{name} must be a boolean (got {type(value).__name__})", "options")
    else:
        _number(name, value)


def _stops(value: object) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("options.stop must be a list of strings", "options")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise bad_request(f"options.stop has more than {MAX_STOP_SEQUENCES} sequences", "options")
    return stops


def response_format(value: object) -> dict | None:
    """`format`: "json" -> any JSON object; a JSON Schema object -> that schema; "" or absent -> text."""
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": value}}
    raise bad_request('format must be "json" or a JSON Schema object', "format")


def thinking_fields(value: object) -> dict[str, Any]:
    """`think`: true/false turn the template's reasoning on or off (chat_template_kwargs
    enable_thinking); "low"/"medium"/"high" also set reasoning_effort."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"chat_template_kwargs": {"enable_thinking": value}}
    if value in THINK_LEVELS:
        return {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": value}
    raise bad_request('think must be true, false, "low", "medium" or "high"', "think")


def common_fields(body: dict) -> dict[str, Any]:
    """The fields /api/chat and /api/generate share, as chat body fields."""
    fields = {**parse_options(body.get("options")), "model": model_name(body),
              "stream": flag(body, "stream", True)}
    fmt = response_format(body.get("format"))
    if fmt is not None:
        fields["response_format"] = fmt
    if keep_alive(body) is not None:  # a bad one is a 400 here, before anything else
        fields["keep_alive"] = body["keep_alive"]
    if body.get("images"):
        raise _no_images()
    return fields


def model_name(body: dict) -> str:
    """`model` (older clients: `name`), required as Ollama requires it. Ollama's default tag
    `:latest` names the model's default file here, so it is dropped."""
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise bad_request("model is required", "model")
    return name.removesuffix(LATEST) or name


def _no_images() -> Exception:
    return bad_request("images are not supported: the models served here read text only", "images")


def chat_body(body: dict) -> dict[str, Any]:
    """An /api/chat body as the chat path's OpenAI chat-completions body."""
    fields = common_fields(body)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise bad_request("tools must be a list of function tools", "tools")
    if tools:
        fields["tools"] = tools  # Ollama's tools are OpenAI's function tools
    return {**fields, **thinking_fields(body.get("think")), "messages": chat_messages(body.get("messages"))}


def generate_body(body: dict) -> dict[str, Any]:
    """An /api/generate body (not raw) as a chat body: `system`, then the prompt as the user turn.
    `template` and `context` (Ollama's Go templates and token history) and `suffix` (fill in the
    middle) cannot be honoured with a Jinja template: a 400 says so rather than ignoring them."""
    _refuse_unsupported_generate(body)
    messages = []
    system = text_field(body, "system")
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": text_field(body, "prompt")})
    return {**common_fields(body), **thinking_fields(body.get("think")), "messages": messages}


def raw_body(body: dict) -> dict[str, Any]:
    """An /api/generate body with `raw: true` as an OpenAI completions body: the prompt as written."""
    _refuse_unsupported_generate(body)
    if text_field(body, "system"):
        raise bad_request("system has no place in a raw prompt: write it into the prompt", "system")
    return {**common_fields(body), "prompt": text_field(body, "prompt")}


def _refuse_unsupported_generate(body: dict) -> None:
    if text_field(body, "suffix"):
        raise bad_request("suffix (fill-in-the-middle) is not supported by this server", "suffix")
    if text_field(body, "template"):
        raise bad_request("template is not supported: the model's own chat template is used; send raw: true "
                          "with a prompt you formatted yourself", "template")
    if body.get("context"):
        raise bad_request("context (token history) is not supported: send the conversation to /api/chat",
                          "context")


def text_field(body: dict, key: str) -> str:
    """A string field; absent or null is ""."""
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"{key} must be a string", key)
    return value


def chat_messages(raw: object) -> list[dict[str, Any]]:
    """Ollama messages -> OpenAI messages. Ollama's tool calls carry no id and its tool results
    name the tool (`tool_name`), so calls get ids here and each result answers the earliest
    unanswered call of that name (else the earliest unanswered call). Counts are bounded here,
    before the matching (which scans the pending calls), not only by the chat path after it."""
    if not isinstance(raw, list):
        raise bad_request("messages must be a list", "messages")
    if len(raw) > MAX_CHAT_MESSAGES:
        raise bad_request(f"messages has {len(raw)} entries; at most {MAX_CHAT_MESSAGES} are accepted", "messages")
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, name) of calls not answered yet
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{i}] must be an object", "messages")
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(f"messages[{i}].role must be one of {', '.join(ROLES)}", "messages")
        if message.get("images"):
            raise _no_images()
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise bad_request(f"messages[{i}].content must be a string", "messages")
        mapped: dict[str, Any] = {"role": role, "content": content or ""}
        if role == "assistant" and message.get("tool_calls"):
            mapped["tool_calls"] = _calls(message["tool_calls"], i)
            pending = [(c["id"], c["function"]["name"]) for c in mapped["tool_calls"]]
        elif role == "tool":
            mapped.update(_answer(message, pending, i))
        out.append(mapped)
    return out


def _calls(raw: object, i: int) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise bad_request(f"messages[{i}].tool_calls must be a list", "messages")
    if len(raw) > MAX_TOOL_CALLS_PER_MESSAGE:
        raise bad_request(f"messages[{i}].tool_calls has more than {MAX_TOOL_CALLS_PER_MESSAGE} calls", "messages")
    calls = []
    for j, call in enumerate(raw):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise bad_request(f"messages[{i}].tool_calls[{j}] needs function.name", "messages")
        arguments = function.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, (dict, str)):
            raise bad_request(f"messages[{i}].tool_calls[{j}].function.arguments must be an object", "messages")
        call_id = call.get("id")
        calls.append({"id": call_id if isinstance(call_id, str) and call_id else f"call_{i}_{j}",
                      "type": "function",
                      "function": {"name": name,
                                   "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
    return calls


def _answer(message: dict, pending: list[tuple[str, str]], i: int) -> dict[str, Any]:
    """The tool_call_id (and name) of a tool result; consumes the call it answers from `pending`."""
    given, name = message.get("tool_call_id"), message.get("tool_name") or message.get("name")
    match = next((p for p in pending if p[0] == given), None) if isinstance(given, str) else None
    match = match or next((p for p in pending if p[1] == name), None) or (pending[0] if pending else None)
    if match is None:
        raise bad_request(f"messages[{i}] is a tool result but no assistant tool call before it is unanswered",
                          "messages")
    pending.remove(match)
    return {"tool_call_id": match[0], "name": match[1]}


# Replies

def rfc3339(moment: datetime | None = None) -> str:
    """`moment` (default: now) as Ollama writes times: RFC 3339 in UTC."""
    return (moment or datetime.now(timezone.utc)).isoformat().replace("+00:00", "Z")


def done_reason(finish_reason: str | None) -> str:
    """Ollama says "stop" after tool calls too; "length" when num_predict or the context ran out."""
    return "length" if finish_reason == "length" else "stop"


def tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Calls in Ollama's shape: arguments as an object, not JSON text."""
    return [{"id": c.id, "function": {"index": i, "name": c.name, "arguments": _arguments(c.arguments)}}
            for i, c in enumerate(calls)]


def _arguments(text: str) -> dict[str, Any]:
    value = loads_or_none(text) if text else {}
    return value if isinstance(value, dict) else {"arguments": text}  # never the case under a tool grammar


@dataclass(frozen=True, slots=True)
class Timings:
    """Seconds and counts behind Ollama's closing fields."""
    total_s: float
    load_s: float
    prompt_s: float
    generation_s: float
    num_prompt_tokens: int
    num_generated_tokens: int

    def fields(self) -> dict[str, int]:
        return {"total_duration": _ns(self.total_s), "load_duration": _ns(self.load_s),
                "prompt_eval_count": self.num_prompt_tokens, "prompt_eval_duration": _ns(self.prompt_s),
                "eval_count": self.num_generated_tokens, "eval_duration": _ns(self.generation_s)}


def _ns(seconds: float) -> int:
    return max(0, int(seconds * NS))
