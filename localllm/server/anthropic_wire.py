"""Anthropic's Messages API body -> the OpenAI chat-completions body the chat path takes.

Pure (no aiohttp): every bad field is a 400 naming it the way Anthropic does (`messages.0.content.1`).
The answer's side (blocks, stop reasons, stream events) is in anthropic_events.py.
"""
from __future__ import annotations

import json
from collections.abc import Callable

from localllm.chat.messages import MAX_CHAT_MESSAGES, MAX_TOOLS
from localllm.server.errors import ApiError, bad_request

MAX_CONTENT_BLOCKS = 4096
"""Content blocks in one request (every message's, tool results' and the system prompt's together)."""
JOIN = "\n\n"
"""Between the text blocks of one turn: Anthropic's blocks are separate paragraphs."""

_MEDIA = ("image", "document", "search_result", "container_upload")
_ASSISTANT_ONLY = ("tool_use", "thinking", "redacted_thinking", "server_tool_use")
_THINKING = {"enabled": True, "adaptive": True, "disabled": False}
_TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}


def chat_body(body: dict, *, count_only: bool = False) -> dict:
    """The chat body for a /v1/messages body (`count_only`: /v1/messages/count_tokens, which
    takes no max_tokens or sampling fields)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model: Field required (a model name)", "model")
    budget = _Budget()
    chat: dict = {"model": model, "messages": _system(body.get("system"), budget)
                  + _messages(body.get("messages"), budget)}
    chat.update(_tools(body.get("tools"), body.get("tool_choice")))
    thinking = _thinking(body.get("thinking"))
    if thinking is not None:
        chat["chat_template_kwargs"] = {"enable_thinking": thinking}
    if count_only:
        return chat
    if chat["messages"][-1]["role"] == "assistant":  # as Anthropic answers for its newer models
        raise bad_request("messages: the last message must be a user message; prefilling the assistant's reply "
                          "is not supported by this server", "messages")
    chat["max_tokens"] = _max_tokens(body.get("max_tokens"))
    for name in ("temperature", "top_p", "top_k", "stream"):
        if body.get(name) is not None:
            chat[name] = body[name]
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise bad_request("stop_sequences: must be a list of strings", "stop")
        chat["stop"] = stops
    response_format = _output_format(body.get("output_config"))
    if response_format is not None:
        chat["response_format"] = response_format
    return chat


class _Budget:
    """Counts content blocks across the request, so no body walks more than MAX_CONTENT_BLOCKS."""

    def __init__(self) -> None:
        self.left = MAX_CONTENT_BLOCKS

    def take(self, num_blocks: int, where: str) -> None:
        self.left -= num_blocks
        if self.left < 0:
            raise bad_request(f"{where}: at most {MAX_CONTENT_BLOCKS} content blocks per request", "messages")


def _max_tokens(value: object) -> int:
    if value is None:
        raise bad_request("max_tokens: Field required", "max_tokens")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request("max_tokens: must be an integer of at least 1", "max_tokens")
    return value


def _system(value: object, budget: _Budget) -> list[dict]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [{"role": "system", "content": value}]
    blocks = _blocks(value, "system", budget)
    for i, block in enumerate(blocks):
        if block["type"] != "text":
            raise bad_request(f"system.{i}: only text blocks are supported in the system prompt", "system")
    return [{"role": "system", "content": JOIN.join(_text(b, f"system.{i}") for i, b in enumerate(blocks))}]


def _messages(value: object, budget: _Budget) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise bad_request("messages: must be a non-empty list of messages", "messages")
    if len(value) > MAX_CHAT_MESSAGES:
        raise bad_request(f"messages: at most {MAX_CHAT_MESSAGES} messages per request", "messages")
    out: list[dict] = []
    for i, message in enumerate(value):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise bad_request(f"{where}: must be an object with role and content", "messages")
        blocks = _blocks(message.get("content"), f"{where}.content", budget)
        role = message.get("role")
        if role == "user":
            out.extend(_user_turn(blocks, where, budget))
        elif role == "assistant":
            out.append(_assistant_turn(blocks, where))
        else:
            raise bad_request(f"{where}.role: must be 'user' or 'assistant'", "messages")
    return _merged(out)


def _blocks(content: object, where: str, budget: _Budget) -> list[dict]:
    """`content` as a list of blocks (a string is one text block); each an object with a string type."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise bad_request(f"{where}: must be a string or a list of content blocks", "messages")
    budget.take(len(content), where)
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise bad_request(f"{where}.{j}: a content block must be an object with a type", "messages")
    return content


def _text(block: dict, where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise bad_request(f"{where}.text: must be a string", "messages")
    return text


def _unsupported(kind: str, where: str, role: str) -> ApiError:
    if kind in _MEDIA:
        return bad_request(f"{where}: {kind} blocks are not supported by this server (its models read text "
                           "only); send text blocks", "messages")
    if kind in _ASSISTANT_ONLY or kind == "tool_result":
        return bad_request(f"{where}: a {kind} block cannot be in a {role} message", "messages")
    return bad_request(f"{where}.type: unknown content block type {kind[:40]!r}", "messages")


def _user_turn(blocks: list[dict], where: str, budget: _Budget) -> list[dict]:
    """Tool results first (role tool, each right after the assistant's calls), then the text."""
    texts, results = _split(blocks, where, "user", {"tool_result": lambda block, at: _tool_result(block, at, budget)})
    if texts or not results:
        results.append({"role": "user", "content": JOIN.join(texts)})
    return results


def _tool_result(block: dict, where: str, budget: _Budget) -> dict:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request(f"{where}.tool_use_id: Field required (the id of the tool_use it answers)", "messages")
    content = block.get("content", "")
    if isinstance(content, list):
        texts, _ = _split(_blocks(content, f"{where}.content", budget), where, "tool_result", {})
        content = JOIN.join(texts)
    elif not isinstance(content, str):
        raise bad_request(f"{where}.content: must be a string or a list of text blocks", "messages")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise bad_request(f"{where}.is_error: must be a boolean", "messages")
    return {"role": "tool", "tool_call_id": call_id, "content": f"Error: {content}" if is_error else content}


def _assistant_turn(blocks: list[dict], where: str) -> dict:
    """Text blocks joined, tool_use blocks as OpenAI tool_calls; earlier thinking is dropped (as
    the chat templates drop earlier reasoning)."""
    texts, calls = _split(blocks, where, "assistant", {"tool_use": _tool_call}, ("thinking", "redacted_thinking"))
    message: dict = {"role": "assistant", "content": JOIN.join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _split(blocks: list[dict], where: str, role: str, readers: dict[str, Callable[[dict, str], dict]],
           skipped: tuple[str, ...] = ()) -> tuple[list[str], list[dict]]:
    """The text blocks' texts, and what `readers` make of the blocks of their kinds; `skipped` kinds
    are dropped, any other kind is a 400 naming the block (`where`.content.N)."""
    texts, others = [], []
    for j, block in enumerate(blocks):
        kind, at = block["type"], f"{where}.content.{j}"
        if kind == "text":
            texts.append(_text(block, at))
        elif kind in readers:
            others.append(readers[kind](block, at))
        elif kind not in skipped:
            raise _unsupported(kind, at, role)
    return texts, others


def _tool_call(block: dict, where: str) -> dict:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request(f"{where}.id: Field required", "messages")
    if not isinstance(name, str) or not name:
        raise bad_request(f"{where}.name: Field required", "messages")
    if not isinstance(arguments, dict):
        raise bad_request(f"{where}.input: must be an object", "messages")
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def _merged(messages: list[dict]) -> list[dict]:
    """Consecutive user turns (or assistant turns) become one, as Anthropic combines them: chat
    templates often insist that roles alternate."""
    out: list[dict] = []
    for message in messages:
        last = out[-1] if out else None
        if last is None or last["role"] != message["role"] or message["role"] not in ("user", "assistant"):
            out.append(dict(message))
            continue
        texts = [t for t in (last["content"], message["content"]) if t]
        calls = last.get("tool_calls", []) + message.get("tool_calls", [])
        last["content"] = JOIN.join(texts) if texts else None if calls else ""
        if calls:
            last["tool_calls"] = calls
    return out


def _tools(tools: object, choice: object) -> dict:
    """`tools` and `tool_choice` as the chat body's tools, tool_choice and parallel_tool_calls."""
    if tools is None or tools == []:
        if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
            raise bad_request(f"tool_choice: type {choice['type']!r} needs tools", "tool_choice")
        return {}
    if not isinstance(tools, list):
        raise bad_request("tools: must be a list of tools", "tools")
    if len(tools) > MAX_TOOLS:
        raise bad_request(f"tools: at most {MAX_TOOLS} tools per request", "tools")
    out = {"tools": [_tool(tool, f"tools.{i}") for i, tool in enumerate(tools)]}
    if choice is not None:
        out.update(_tool_choice(choice))
    return out


def _tool(tool: object, where: str) -> dict:
    if not isinstance(tool, dict):
        raise bad_request(f"{where}: must be an object with name and input_schema", "tools")
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise bad_request(f"{where}.type: server tools ({str(kind)[:40]!r}) are not supported; only client "
                          "tools with name, description and input_schema", "tools")
    name, description, schema = tool.get("name"), tool.get("description", ""), tool.get("input_schema")
    if not isinstance(name, str) or not name:
        raise bad_request(f"{where}.name: Field required", "tools")
    if not isinstance(description, str):
        raise bad_request(f"{where}.description: must be a string", "tools")
    if not isinstance(schema, dict):
        raise bad_request(f"{where}.input_schema: Field required (a JSON Schema object)", "tools")
    return {"type": "function", "function": {"name": name, "description": description, "parameters": schema}}


def _tool_choice(choice: object) -> dict:
    if not isinstance(choice, dict):
        raise bad_request("tool_choice: must be an object with a type", "tool_choice")
    kind = choice.get("type")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise bad_request("tool_choice.name: Field required for type 'tool'", "tool_choice")
        out: dict = {"tool_choice": {"type": "function", "function": {"name": name}}}
    elif kind in _TOOL_CHOICE:
        out = {"tool_choice": _TOOL_CHOICE[kind]}
    else:
        raise bad_request("tool_choice.type: must be auto, any, tool or none", "tool_choice")
    no_parallel = choice.get("disable_parallel_tool_use")
    if no_parallel is not None:
        if not isinstance(no_parallel, bool):
            raise bad_request("tool_choice.disable_parallel_tool_use: must be a boolean", "tool_choice")
        out["parallel_tool_calls"] = not no_parallel
    return out


def _thinking(value: object) -> bool | None:
    """`thinking` -> the templates' enable_thinking (budget_tokens is accepted; the bound is max_tokens)."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in _THINKING:
        raise bad_request("thinking.type: must be enabled, adaptive or disabled", "thinking")
    budget = value.get("budget_tokens")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise bad_request("thinking.budget_tokens: must be a positive integer", "thinking")
    return _THINKING[kind]


def _output_format(config: object) -> dict | None:
    """output_config.format (structured outputs: a JSON schema) -> response_format."""
    if config is None:
        return None
    spec = config.get("format") if isinstance(config, dict) else None
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("type") != "json_schema" or not isinstance(spec.get("schema"), dict):
        raise bad_request("output_config.format: must be {type: json_schema, schema: {...}}", "response_format")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": spec["schema"]}}
