"""Tools for chat templates that know nothing of tools (family `generic`), in plain messages.

A template such as Gemma's renders only role and content. For it the server rewrites the
normalised messages before rendering, so the model still sees the tools, its earlier calls and
their results, in the generic call format (see chat/families.py):

- the tool list (one JSON object per line: name, description, parameters) and the instruction
  to answer a call with only `{"tool_calls": [{"name": ..., "arguments": {...}}]}` go at the top of
  the system message, or into a new system message; for a template without a system role
  (it raises or drops a system message), at the top of the first user message instead;
- an assistant message with tool_calls becomes an assistant turn holding its content, then the
  calls as that JSON text;
- tool results become one user turn per run of consecutive results, each naming its tool:
  `Result of NAME (call ID):` and the content.

All of it is message content, so every user-supplied string in it (tool descriptions, schemas,
arguments, results) is tokenised without parsing special tokens, as any message content is.
"""
from __future__ import annotations

import json

TOOLS_PREAMBLE = (
    "You can call the following tools. Each line describes one tool: its name, what it does, and the "
    "JSON Schema of its arguments.\n")
CALL_INSTRUCTION = (
    "\nTo call one or more tools, answer with only a JSON object in this format and nothing else:\n"
    '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments as the schema says>}}]}\n'
    "When a tool's result is given to you, use it to answer.")


def tools_text(tools: list[dict]) -> str:
    """The system text that lists the tools (OpenAI-shape dicts) and the generic call format."""
    lines = [json.dumps({"name": t["function"]["name"], "description": t["function"]["description"],
                         "parameters": t["function"]["parameters"]}, ensure_ascii=False) for t in tools]
    return TOOLS_PREAMBLE + "\n".join(lines) + "\n" + CALL_INSTRUCTION


def calls_text(tool_calls: list[dict]) -> str:
    """Earlier calls as the model is asked to write them."""
    calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in tool_calls]
    return json.dumps({"tool_calls": calls}, ensure_ascii=False)


def with_tools_in_messages(messages: list[dict], tools: list[dict], *, system_role: bool) -> list[dict]:
    """Normalised messages rewritten for a template without tools (see the module docstring)."""
    out: list[dict] = []
    for message in messages:
        role = message["role"]
        if role == "assistant" and message.get("tool_calls"):
            content = message["content"]
            text = calls_text(message["tool_calls"])
            out.append({"role": "assistant", "content": f"{content}\n{text}" if content else text})
        elif role == "tool":
            result = f"Result of {message['name']} (call {message['tool_call_id']}):\n{message['content']}"
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n\n" + result
            else:
                out.append({"role": "user", "content": result, "_tool_results": True})
        else:
            out.append(dict(message))
    for message in out:
        message.pop("_tool_results", None)
    if tools:
        _add_tools(out, tools_text(tools), system_role=system_role)
    return out


def _add_tools(messages: list[dict], text: str, *, system_role: bool) -> None:
    """Puts the tools text first in the system message, a new one, or the first user message."""
    if system_role:
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = text + "\n\n" + messages[0]["content"]
        else:
            messages.insert(0, {"role": "system", "content": text})
        return
    first_user = next((m for m in messages if m["role"] == "user"), None)
    if first_user is None:
        messages.insert(0, {"role": "user", "content": text})
    else:
        first_user["content"] = text + "\n\n" + first_user["content"]
