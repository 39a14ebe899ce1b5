"""OpenAI Responses request bodies -> one OpenAI chat-completions body (pure, no I/O).

What the Responses API has and chat completions has not (items, instructions, flat function
tools, text.format, reasoning.effort) is mapped here; everything else (sampling, validation of
messages and tools, templates, grammars) is the one chat path's. Fields this server cannot honour
(background runs, hosted tools, files and images) are a 400 that says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from localllm.chat.template import MAX_CHAT_MESSAGES
from localllm.server.errors import bad_request
from localllm.server.schemas import flag

PASSED_THROUGH = ("model", "temperature", "top_p", "parallel_tool_calls", "seed", "top_k", "min_p",
                  "repeat_penalty", "stop", "chat_template_kwargs", "keep_alive", "cache_salt")
"""Same name and meaning in both APIs (the last ones: this server's extensions, as in chat)."""
MAX_METADATA_KEYS, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS = 16, 64, 512
"""OpenAI's bounds on `metadata`."""
MAX_ID_CHARS = 128
_TEXT_PARTS = {"input_text", "output_text", "text"}
_UNSUPPORTED_PARTS = {"input_image": "images", "input_file": "files", "input_audio": "audio"}
_UNSUPPORTED_FIELDS = {
    "background": "background responses are not supported: send the request without it and wait for the answer",
    "conversation": "the Conversations API is not supported: continue with previous_response_id",
    "prompt": "stored prompt templates are not supported: send input and instructions",
}


@dataclass(slots=True)
class ResponsesRequest:
    """A validated /v1/responses body, split into what the chat path needs and what the
    response object echoes back."""

    chat_body: dict
    items: list[dict]
    """This request's input as items (a string input becomes one user message)."""
    echo: dict = field(default_factory=dict)
    """The request fields a Response object repeats (instructions, tools, text, ...)."""
    store: bool = True
    previous_response_id: str | None = None
    stream: bool = False


def parse_request(body: dict) -> ResponsesRequest:
    """Validates `body` (400 naming the field) and maps what needs no history. The chat body's
    messages are filled in by `with_history` once the previous response (if any) is read."""
    for name, why in _UNSUPPORTED_FIELDS.items():
        if body.get(name) not in (None, False):
            raise bad_request(f"{name}: {why}", name)
    if body.get("top_logprobs") not in (None, 0):
        raise bad_request("top_logprobs is not supported on /v1/responses; use /v1/chat/completions", "top_logprobs")
    items = input_items(body.get("input"))
    chat = {k: body[k] for k in PASSED_THROUGH if body.get(k) is not None}
    max_output = body.get("max_output_tokens")
    if max_output is not None:
        if type(max_output) is not int or max_output < 1:
            raise bad_request("max_output_tokens must be a positive integer", "max_output_tokens")
        chat["max_tokens"] = max_output
    tools = [function_tool(t, i) for i, t in enumerate(_list(body.get("tools"), "tools"))]
    if tools:
        chat["tools"] = tools
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = tool_choice(body["tool_choice"])
    text = _object(body.get("text"), "text")
    response_format = text_format(text.get("format"))
    if response_format is not None:
        chat["response_format"] = response_format
    reasoning = _object(body.get("reasoning"), "reasoning")
    if reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad_request("instructions must be a string", "instructions")
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous or len(previous) > MAX_ID_CHARS):
        raise bad_request(f"previous_response_id must be a response id (at most {MAX_ID_CHARS} characters)",
                          "previous_response_id")
    store, stream = flag(body, "store", True), flag(body, "stream", False)
    chat["stream"] = stream
    echo = {
        "instructions": instructions, "max_output_tokens": body.get("max_output_tokens"),
        "metadata": metadata(body.get("metadata")), "parallel_tool_calls": flag(body, "parallel_tool_calls", True),
        "previous_response_id": previous, "reasoning": {"effort": reasoning.get("effort"), "summary": None},
        "store": store, "temperature": body.get("temperature", 1.0), "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto", "tools": list(body.get("tools") or []),
        "top_p": body.get("top_p", 1.0), "truncation": body.get("truncation") or "disabled", "user": body.get("user"),
    }
    return ResponsesRequest(chat, items, echo, store, previous, stream)


def with_history(request: ResponsesRequest, history: list[dict]) -> dict:
    """The chat body: instructions (this request's only: OpenAI does not carry them over), the
    stored conversation, then this request's items."""
    items = history + request.items
    if not items:
        raise bad_request("input is required (a string or a list of items)", "input")
    if len(items) > MAX_CHAT_MESSAGES:
        raise bad_request(f"the conversation has {len(items)} items; at most {MAX_CHAT_MESSAGES} are accepted",
                          "input")
    messages = chat_messages(items)
    instructions = request.echo["instructions"]
    if instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    return {**request.chat_body, "messages": messages}


def input_items(value: object) -> list[dict]:
    """`input` as a list of item dicts: a string is one user message."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise bad_request("input must be a string or a list of items", "input")
    if len(value) > MAX_CHAT_MESSAGES:
        raise bad_request(f"input has {len(value)} items; at most {MAX_CHAT_MESSAGES} are accepted", "input")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise bad_request(f"input[{i}] must be an object", "input")
    return list(value)


def chat_messages(items: list[dict]) -> list[dict]:
    """Responses items -> chat messages. Consecutive function_call items become one assistant
    message's tool_calls (joined to the assistant text right before them); reasoning items
    are dropped (the template does not take a past turn's reasoning back)."""
    messages: list[dict] = []
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": _role(item, i), "content": _text(item.get("content"), i)})
        elif kind == "function_call":
            call = {"id": _str(item, "call_id", i), "type": "function",
                    "function": {"name": _str(item, "name", i), "arguments": _str(item, "arguments", i)}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_call_id" not in last:
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": _str(item, "call_id", i),
                             "content": output if isinstance(output, str) else _text(output, i)})
        elif kind != "reasoning":
            raise bad_request(f"input[{i}].type {str(kind)[:40]!r} is not supported: this server takes message, "
                              "function_call and function_call_output items (reasoning items are ignored)", "input")
    return messages


def _role(item: dict, i: int) -> str:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise bad_request(f"input[{i}].role must be user, assistant, system or developer", "input")
    return role


def _text(content: object, i: int) -> str:
    """A message's content: a string, or text parts (input_text, output_text, refusal) joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"input[{i}].content must be a string or a list of content parts", "input")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _UNSUPPORTED_PARTS:
            raise bad_request(f"input[{i}]: {_UNSUPPORTED_PARTS[kind]} ({kind}) are not supported; this server "
                              "takes text only", "input")
        key = "refusal" if kind == "refusal" else "text"
        if kind not in _TEXT_PARTS | {"refusal"} or not isinstance(part.get(key), str):
            raise bad_request(f"input[{i}].content: parts must be input_text or output_text with a text string",
                              "input")
        texts.append(part[key])
    return "".join(texts)


def _str(item: dict, key: str, i: int) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value and key != "arguments":
        raise bad_request(f"input[{i}] ({item.get('type')}) needs {key} as a string", "input")
    return value


def function_tool(tool: object, i: int) -> dict:
    """A flat Responses function tool -> chat's {"type": "function", "function": {...}}."""
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function":
        raise bad_request(f"tools[{i}]: {str(kind)[:40]!r} tools are not supported (hosted tools such as "
                          "web_search, file_search or code_interpreter run only at OpenAI); only function "
                          "tools are", "tools")
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    return {"type": "function", "function": function}


def tool_choice(choice: object) -> str | dict:
    if choice in ("auto", "none", "required"):
        return choice  # type: ignore[return-value]
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad_request('tool_choice must be "auto", "none", "required" or {"type": "function", "name": ...}',
                      "tool_choice")


def text_format(fmt: object) -> dict | None:
    """text.format -> response_format: text (none), json_object, or json_schema (flat here,
    nested under json_schema in chat)."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": spec}
    raise bad_request("text.format.type must be text, json_object or json_schema", "text")


def metadata(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if (not isinstance(value, dict) or len(value) > MAX_METADATA_KEYS
            or any(not isinstance(v, str) or len(k) > MAX_METADATA_KEY_CHARS or len(v) > MAX_METADATA_VALUE_CHARS
                   for k, v in value.items())):
        raise bad_request(f"metadata must map at most {MAX_METADATA_KEYS} keys (of at most "
                          f"{MAX_METADATA_KEY_CHARS} characters) to strings of at most {MAX_METADATA_VALUE_CHARS}",
                          "metadata")
    return value


def _list(value: object, name: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad_request(f"{name} must be a list", name)
    return value


def _object(value: object, name: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"{name} must be an object", name)
    return value
