"""OpenAI-shape chat messages, tools and tool_choice: validated and normalised (stdlib only).

Every adapter maps its wire body to OpenAI's chat-completions shape; this module checks that
shape once and turns it into what Jinja chat templates (Hugging Face conventions) expect:
contents as strings, tool-call arguments as dicts, tool results naming their call's function.
Errors are `InvalidParam`; the server renders them as 400s in the request's protocol.
"""
from __future__ import annotations

import json
import re

from localllm.chat.types import ToolChoice, ToolChoiceMode, ToolSpec
from localllm.types import InvalidParam

MAX_CHAT_MESSAGES = 4096
"""Messages per chat request: bounds the rendering and tokenising work one request can ask for."""
MAX_TOOLS = 128
MAX_TOOL_CALLS_PER_MESSAGE = 128
MAX_TOOL_DESCRIPTION_CHARS = 16_384
MAX_TOOL_SCHEMA_CHARS = 65_536
"""A tool's `parameters` schema as JSON text; the grammar builder bounds its structure further."""
MAX_CALL_ID_CHARS = 128
MAX_TEMPLATE_KWARGS = 32
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
"""OpenAI's words (the openai SDK's ReasoningEffort); templates that read `reasoning_effort` get it as is."""
TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_KWARG_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
RESERVED_TEMPLATE_NAMES = frozenset({
    "messages", "tools", "add_generation_prompt", "bos_token", "eos_token", "raise_exception",
    "strftime_now", "namespace", "range", "dict", "lipsum", "cycler", "joiner"})
"""Names the server passes to the template itself: chat_template_kwargs cannot replace them."""


def normalise_messages(messages: object) -> list[dict]:
    """Validated messages as templates expect them (idempotent: its own output passes through).

    Roles: system, developer (-> system), user, assistant, tool, and legacy function (-> tool).
    An assistant message may carry `tool_calls` (or legacy `function_call`) with content null;
    a tool message's `tool_call_id` must name a call of an earlier assistant message. Keys a
    template tests with `is defined` (`tool_calls`, `tool_call_id`, `name`) appear only when set."""
    if not isinstance(messages, list) or not messages:
        raise InvalidParam("messages", "messages must be a non-empty list")
    if len(messages) > MAX_CHAT_MESSAGES:
        raise InvalidParam("messages", f"messages has {len(messages)} entries; at most {MAX_CHAT_MESSAGES} "
                           "are accepted")
    calls: dict[str, str] = {}  # call id -> function name, from earlier assistant messages
    out = []
    for index, message in enumerate(messages):
        out.append(_message(message, f"messages[{index}]", index, calls))
    return out


def _message(message: object, where: str, index: int, calls: dict[str, str]) -> dict:
    if not isinstance(message, dict):
        raise InvalidParam("messages", f"{where} must be an object")
    role = message.get("role")
    if role not in _ROLES:
        raise InvalidParam("messages", f"{where}.role must be one of {sorted(_ROLES)}")
    if role == "assistant":
        return _assistant(message, where, index, calls)
    content = _content(message.get("content"), where, required=True)
    if role in ("tool", "function"):
        return _tool_result(message, role, content, where, calls)
    return {"role": "system" if role == "developer" else role, "content": content}


def _content(content: object, where: str, *, required: bool) -> str:
    """A string, or a list of text parts joined; None only where not `required`."""
    if content is None:
        if required:
            raise InvalidParam("messages", f"{where}.content is required")
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidParam("messages", f"{where}.content: only text parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidParam("messages", f"{where}.content must be a string or a list of text parts")


def _assistant(message: dict, where: str, index: int, calls: dict[str, str]) -> dict:
    raw_calls = message.get("tool_calls")
    legacy = message.get("function_call")
    if raw_calls is not None and legacy is not None:
        raise InvalidParam("messages", f"{where}: tool_calls and function_call cannot both be set")
    if legacy is not None:  # the legacy single call: one tool call with an id of our making
        raw_calls = [{"id": f"call_{index}", "type": "function", "function": legacy}]
    tool_calls = _tool_calls(raw_calls, where, calls) if raw_calls is not None else []
    content = _content(message.get("content"), where, required=not tool_calls)
    out: dict = {"role": "assistant", "content": content}
    if tool_calls:
        out["tool_calls"] = tool_calls
    return out


def _tool_calls(raw: object, where: str, calls: dict[str, str]) -> list[dict]:
    if not isinstance(raw, list):
        raise InvalidParam("messages", f"{where}.tool_calls must be a list")
    if len(raw) > MAX_TOOL_CALLS_PER_MESSAGE:
        raise InvalidParam("messages", f"{where}.tool_calls has more than {MAX_TOOL_CALLS_PER_MESSAGE} calls")
    out = []
    for i, call in enumerate(raw):
        at = f"{where}.tool_calls[{i}]"
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise InvalidParam("messages", f"{at} must be an object of type function")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not 0 < len(call_id) <= MAX_CALL_ID_CHARS or not call_id.isprintable():
            raise InvalidParam("messages", f"{at}.id must be a string of 1 to {MAX_CALL_ID_CHARS} printable "
                               "characters")
        function = call.get("function")
        if not isinstance(function, dict):
            raise InvalidParam("messages", f"{at}.function must be an object")
        name = _tool_name(function.get("name"), "messages", f"{at}.function.name")
        arguments = _arguments(function.get("arguments"), f"{at}.function.arguments")
        calls[call_id] = name
        out.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
    return out


def _arguments(raw: object, where: str) -> dict:
    """OpenAI sends arguments as JSON text; templates iterate them, so they become a dict."""
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, (str, dict)):
        raise InvalidParam("messages", f"{where} must be a JSON string")
    try:  # a dict (from an adapter) must write back as JSON too: the fallback and templates dump it
        value = json.loads(raw) if isinstance(raw, str) else raw
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise InvalidParam("messages", f"{where} is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidParam("messages", f"{where} must be a JSON object")
    return value


def _tool_result(message: dict, role: str, content: str, where: str, calls: dict[str, str]) -> dict:
    if role == "function":  # legacy: names the function; answers its latest call
        name = _tool_name(message.get("name"), "messages", f"{where}.name")
        call_id = next((i for i, n in reversed(calls.items()) if n == name), None)
        if call_id is None:
            raise InvalidParam("messages", f"{where}: no earlier function_call of {name!r}")
        return {"role": "tool", "content": content, "tool_call_id": call_id, "name": name}
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise InvalidParam("messages", f"{where}.tool_call_id is required (a string)")
    if call_id not in calls:
        raise InvalidParam("messages", f"{where}.tool_call_id {call_id[:MAX_CALL_ID_CHARS]!r} matches no "
                           "tool call of an earlier assistant message")
    return {"role": "tool", "content": content, "tool_call_id": call_id, "name": calls[call_id]}


def _tool_name(name: object, param: str, where: str) -> str:
    if not isinstance(name, str) or not TOOL_NAME_RE.match(name):
        raise InvalidParam(param, f"{where} must match {TOOL_NAME_RE.pattern}")
    return name


def parse_tools(body: dict) -> tuple[list[ToolSpec], ToolChoice, bool]:
    """(tools, tool_choice, parallel_tool_calls) of an OpenAI chat body; the legacy
    `functions` / `function_call` map onto tools / tool_choice. Without tools the choice is NONE."""
    tools_raw, functions = body.get("tools"), body.get("functions")
    if tools_raw is not None and functions is not None:
        raise InvalidParam("functions", "tools and functions cannot both be set")
    if functions is not None:
        tools = _tool_list(functions, "functions", legacy=True)
    else:
        tools = _tool_list(tools_raw, "tools", legacy=False) if tools_raw is not None else []
    choice_raw, function_call = body.get("tool_choice"), body.get("function_call")
    if choice_raw is not None and function_call is not None:
        raise InvalidParam("function_call", "tool_choice and function_call cannot both be set")
    if function_call is not None:
        choice = _tool_choice(function_call, "function_call", tools, legacy=True)
    else:
        choice = _tool_choice(choice_raw, "tool_choice", tools, legacy=False)
    parallel = body.get("parallel_tool_calls", True)
    if parallel is None:
        parallel = True
    if not isinstance(parallel, bool):
        raise InvalidParam("parallel_tool_calls", "parallel_tool_calls must be a boolean")
    return tools, choice, parallel


def _tool_list(raw: object, param: str, *, legacy: bool) -> list[ToolSpec]:
    if not isinstance(raw, list):
        raise InvalidParam(param, f"{param} must be a list")
    if len(raw) > MAX_TOOLS:
        raise InvalidParam(param, f"{param} has {len(raw)} entries; at most {MAX_TOOLS} are accepted")
    tools, names = [], set()
    for i, entry in enumerate(raw):
        where = f"{param}[{i}]"
        if not legacy:
            if not isinstance(entry, dict) or entry.get("type") != "function":
                raise InvalidParam(param, f"{where} must be an object of type function (the only tool type "
                                   "this server runs)")
            entry = entry.get("function")
            where += ".function"
        tool = _tool_spec(entry, param, where)
        if tool.name in names:
            raise InvalidParam(param, f"{where}.name {tool.name!r} is not unique")
        names.add(tool.name)
        tools.append(tool)
    return tools


def _tool_spec(entry: object, param: str, where: str) -> ToolSpec:
    if not isinstance(entry, dict):
        raise InvalidParam(param, f"{where} must be an object")
    name = _tool_name(entry.get("name"), param, f"{where}.name")
    description = entry.get("description") or ""
    if not isinstance(description, str) or len(description) > MAX_TOOL_DESCRIPTION_CHARS:
        raise InvalidParam(param, f"{where}.description must be a string of at most {MAX_TOOL_DESCRIPTION_CHARS} "
                           "characters")
    parameters = entry.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise InvalidParam(param, f"{where}.parameters must be a JSON Schema of type object")
    try:
        size = len(json.dumps(parameters))
    except (TypeError, ValueError, RecursionError):
        raise InvalidParam(param, f"{where}.parameters is not a JSON object") from None
    if size > MAX_TOOL_SCHEMA_CHARS:
        raise InvalidParam(param, f"{where}.parameters is larger than {MAX_TOOL_SCHEMA_CHARS} characters as JSON")
    return ToolSpec(name, description, parameters)


def _tool_choice(raw: object, param: str, tools: list[ToolSpec], *, legacy: bool) -> ToolChoice:
    if raw is None:
        return ToolChoice(ToolChoiceMode.AUTO if tools else ToolChoiceMode.NONE)
    modes = ("auto", "none") if legacy else ("auto", "none", "required")
    if isinstance(raw, str):
        if raw not in modes:
            raise InvalidParam(param, f"{param} must be one of {list(modes)} or names a function")
        choice = ToolChoice(ToolChoiceMode(raw))
    else:
        function = raw if legacy else (raw.get("function") if isinstance(raw, dict) and
                                       raw.get("type") == "function" else None)
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            shape = '{"name": ...}' if legacy else '{"type": "function", "function": {"name": ...}}'
            raise InvalidParam(param, f"{param} must be one of {list(modes)} or {shape}")
        if name not in {t.name for t in tools}:
            raise InvalidParam(param, f"{param} names {name[:64]!r}, which is not among the tools")
        choice = ToolChoice(ToolChoiceMode.NAMED, name)
    if choice.mode is ToolChoiceMode.REQUIRED and not tools:
        raise InvalidParam(param, f"{param} is required but no tools are given")
    if choice.mode is ToolChoiceMode.AUTO and not tools:
        return ToolChoice(ToolChoiceMode.NONE)
    return choice


def template_kwargs(body: dict) -> dict:
    """Extra template variables of a chat body: `chat_template_kwargs` (e.g. enable_thinking)
    and `reasoning_effort`. Names are identifiers and may not replace what the server passes."""
    raw = body.get("chat_template_kwargs")
    kwargs = dict(check_template_kwargs({} if raw is None else raw))
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in REASONING_EFFORTS:
            raise InvalidParam("reasoning_effort", f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}")
        kwargs.setdefault("reasoning_effort", effort)
    return kwargs


def check_template_kwargs(kwargs: object) -> dict:
    """`kwargs` if it is an object of at most MAX_TEMPLATE_KWARGS identifiers that do not replace
    what the server passes the template; else InvalidParam("chat_template_kwargs")."""
    if not isinstance(kwargs, dict) or len(kwargs) > MAX_TEMPLATE_KWARGS:
        raise InvalidParam("chat_template_kwargs", f"chat_template_kwargs must be an object of at most "
                           f"{MAX_TEMPLATE_KWARGS} entries")
    for key in kwargs:
        if not isinstance(key, str) or not _KWARG_NAME_RE.match(key) or key in RESERVED_TEMPLATE_NAMES:
            raise InvalidParam("chat_template_kwargs", f"chat_template_kwargs key {str(key)[:64]!r} is not an "
                               "identifier the template may receive")
    return kwargs


def tool_dicts(tools: list[ToolSpec]) -> list[dict]:
    """Tools as templates receive them (OpenAI's shape, as Hugging Face's apply_chat_template)."""
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters}} for t in tools]
