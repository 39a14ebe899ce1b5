"""Tool-call grammars, the pure part: one JSON schema per call shape, the GBNF around it, triggers.

`llama_backend.grammar.tool_grammar` converts `CallGrammarPlan.document` with llama_cpp's
JSON-schema converter (the only step that needs llama_cpp) and joins the rules it wrote
with `CallGrammarPlan.root_rules(...)`. Everything else is here, standard library only, so
the scripted test backend checks tools exactly as the real one does.

A call is `{"name": <const>, <family.arguments_key>: <that tool's parameters>}`, one
object per offered tool, joined by anyOf (one tool: the object alone). The family's call
format wraps it (see chat/families.py):

- hermes:  `<tool_call>` call `</tool_call>`, one block, or up to MAX_PARALLEL_CALLS when parallel.
- llama3:  the bare call object. Always one call: Llama 3.1's JSON format has no list of calls.
- mistral: `[TOOL_CALLS]` then a JSON array of calls (one unless parallel, else up to MAX_PARALLEL_CALLS); each
  call may carry Mistral's 9-character `"id"` after its arguments.
- generic: `{"tool_calls": [call, ...]}` (exactly one element unless parallel; at most MAX_PARALLEL_CALLS).

Modes (ToolChoiceMode): REQUIRED forces a call of any tool from the first token; NAMED
forces a call of the named tool; NONE has no grammar. AUTO is the same call grammar made
lazy: it constrains only once the model starts a call (`triggers`); until then the model
writes what it likes, and a reply that never starts a call stays plain text.

AUTO with `response_schema` (response_format json_schema, or `{}` for json_object) is
not lazy: the whole reply is either the family's call(s) or JSON matching the response
schema (a forced choice between the two, like llama.cpp's). With REQUIRED/NAMED the call
is the answer and `response_schema` is ignored: that is what LangChain's
with_structured_output(method="function_calling") sends (tools + a named tool_choice).

Reasoning families (`family.reasons`): forced grammars allow one `<think>...</think>`
section before the call, and when the prompt already opened it (`starts_in_reasoning`)
the reply must first close it. A lazy grammar ignores reasoning: its trigger would also
fire on a call opener written inside the thinking (rare; the reply is then parsed as it is).

Triggers (lazy grammars). llama.cpp keeps the text generated so far and, after each token,
searches it with each trigger pattern; on a match it feeds the grammar the text from the
first non-empty capture group to the end of the text, replaying the last token's tail too.
That replayed tail must be text the grammar accepts, or llama.cpp throws inside a C
callback (the process aborts). So every pattern ends with `$` and allows after the opener
only a short suffix that is a prefix of every call (e.g. `<tool_call>` `\\n` `{"`): a token
that runs past it leaves the grammar asleep and the call arrives as text. Patterns have no
unbounded repetition, so std::regex never recurses deeply on a long reply.

- hermes `(<tool_call>)...$` and mistral `(\\[TOOL_CALLS\\])...$` match anywhere, so the
  model may write text before its call (as Hermes and Mistral models do).
- llama3 `^\\s{0,8}(?:<\\|python_tag\\|>)?(\\{) ?"name"...$`
  and generic `^\\s{0,8}(\\{) ?"tool_calls"...$` match only
  when the reply itself starts as a call: their calls are bare JSON, and a JSON object met
  later in prose is prose (llama.cpp's own llama 3 handler, too, triggers on the reply's
  start). Matching the key as well as `{` keeps plain JSON answers free.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass

from localllm.chat.families import Family
from localllm.chat.types import ToolChoice, ToolChoiceMode, ToolSpec
from localllm.constraints import MAX_GRAMMAR_BYTES, check_schema
from localllm.types import InvalidParam

MAX_TOOLS = 128
CALL_RULE = "tc-call"
"""The rule the converter writes for the JSON part of the call(s)."""
RESPONSE_RULE = "tc-response"
REF_RULE_PREFIX = "tc-ref-"
"""Rules for `$ref` targets are named by us, one per reference: the converter would name
them by the reference's last path part, so two tools' `#/$defs/Item` would share one rule."""
MISTRAL_ID = {"type": "string", "pattern": "^[a-zA-Z0-9]{9}$"}
_WS = " ?"
"""What the converter's `space` rule allows between JSON tokens (llama_cpp 0.3.36: one optional space)."""


def tools_error(message: str) -> InvalidParam:
    return InvalidParam("tools", f"tools: {message}")


@dataclass(frozen=True, slots=True)
class CallGrammarPlan:
    """What `tool_grammar` converts and how it wraps the converter's rules."""

    family: Family
    document: dict
    """`$defs` (each tool's parameters as `tool-N`, the response schema as `response`),
    `call` (the JSON part of the call format) and, with a response schema, `response`."""
    parallel: bool
    lazy: bool
    starts_in_reasoning: bool

    def root_rules(self, call_rule: str, response_rule: str | None) -> str:
        """GBNF for `root` and its helpers around the converter's rules (names start `tc-`,
        which the converter never writes: its names come from ours and from primitives)."""
        body = _calls_rule(self.family, call_rule, self.parallel)
        if response_rule is not None:
            body = f"( {body} | {response_rule} )"
        rules = []
        if self.family.reasons and not self.lazy:
            rules.append(f"tc-think-text ::= {_text_without(self.family.think_close or '')}")
            close = f'tc-think-text {_literal(self.family.think_close or "")} [ \\n]{{0,4}}'
            body = (f"{close} {body}" if self.starts_in_reasoning
                    else f'( {_literal(self.family.think_open or "")} {close} )? {body}')
        if self.family.name == "hermes":
            rules.append(f'tc-block ::= {_literal(self.family.call_open)} [ \\n]? {call_rule} [ \\n]? '
                         f'{_literal(self.family.call_close)}')
        return "\n".join([f"root ::= {body}", *rules]) + "\n"

    @property
    def triggers(self) -> tuple[str, ...]:
        return triggers_for(self.family) if self.lazy else ()


def plan_tool_grammar(family: Family, tools: list[ToolSpec], choice: ToolChoice, parallel: bool,
                      response_schema: dict | None = None, *,
                      starts_in_reasoning: bool = False) -> CallGrammarPlan | None:
    """The grammar plan for a request's tools, or None when nothing is constrained (NONE, or
    AUTO without tools). Raises InvalidParam("tools") for a tool's schema past the bounds,
    InvalidParam("tool_choice") for a named tool that is not offered, and
    InvalidParam("response_format") for a bad response schema."""
    if choice.mode is ToolChoiceMode.NONE or (not tools and choice.mode is ToolChoiceMode.AUTO):
        return None
    if not tools:
        raise InvalidParam("tool_choice", "tool_choice: a call was required but no tools were given")
    if len(tools) > MAX_TOOLS:
        raise tools_error(f"at most {MAX_TOOLS} tools may be given")
    if choice.mode is ToolChoiceMode.NAMED:
        tools = [t for t in tools if t.name == choice.name]
        if not tools:
            raise InvalidParam("tool_choice", f"tool_choice: no tool is named {choice.name!r}")
    defs, cost = {}, 0
    for i, tool in enumerate(tools):
        cost += check_parameters(tool)
        defs[f"tool-{i}"] = _relocated(tool.parameters, f"#/$defs/tool-{i}")
    with_response = response_schema is not None and choice.mode is ToolChoiceMode.AUTO
    if with_response:
        cost += check_schema(response_schema)
        defs["response"] = _relocated(response_schema, "#/$defs/response")
    if cost > MAX_GRAMMAR_BYTES:
        raise tools_error(f"the tools' grammar would be about {cost} bytes; the limit is {MAX_GRAMMAR_BYTES}")
    document = {"$defs": defs, "call": _call_shape(family, [t.name for t in tools], parallel)}
    if with_response:
        document["response"] = {"$ref": "#/$defs/response"}
    lazy = choice.mode is ToolChoiceMode.AUTO and not with_response
    return CallGrammarPlan(family, document, parallel, lazy, starts_in_reasoning)


def check_parameters(tool: ToolSpec) -> int:
    """Raises InvalidParam("tools") naming the tool unless its parameters are a bounded
    object schema; returns the grammar size estimated from it."""
    schema = tool.parameters
    try:
        cost = check_schema(schema)
    except InvalidParam as exc:
        message = str(exc).removeprefix("response_format: ")
        raise tools_error(f"function {tool.name!r}: parameters: {message}") from None
    if schema.get("type", "object") != "object":
        raise tools_error(f"function {tool.name!r}: parameters must be a JSON schema of type object")
    return cost


def triggers_for(family: Family) -> tuple[str, ...]:
    """The lazy grammar's trigger pattern for the family's call (see the module docstring)."""
    def optional_chain(*parts: str) -> str:  # "a", "b", "c" -> (?:a(?:b(?:c)?)?)?
        text = ""
        for part in reversed(parts):
            text = f"(?:{part}{text})?"
        return text

    if family.call_open == "[TOOL_CALLS]":
        return (r"(\[TOOL_CALLS\])" + optional_chain(r"\[", _WS, r"\{", _WS, '"') + "$",)
    if family.call_open:
        return (f"({_regex_literal(family.call_open)})" + optional_chain(r"[ \n]?", r"\{", _WS, '"') + "$",)
    key = "tool_calls" if family.name == "generic" else "name"
    tail = [":", _WS, r"\[", _WS, r"\{", _WS, '"'] if key == "tool_calls" else [":", _WS, '"']
    tag = r"(?:<\|python_tag\|>)?" if family.name == "llama3" else ""  # Llama 3.1 may tag its call
    return (r"^\s{0,8}" + tag + r"(\{)" + _WS + f'"{key}"' + optional_chain(_WS, *tail) + "$",)


MAX_PARALLEL_CALLS = 8
"""Calls one reply may make when parallel calls are allowed. Bounded so that a weak model that
keeps calling (the bundled 270M one does) closes its list and its calls parse, instead of writing
calls until max_tokens or the context cuts the reply and no call parses at all."""


def _call_shape(family: Family, names: list[str], parallel: bool) -> dict:
    """The JSON schema of what follows the family's opener: one call, or the list of calls."""
    calls = []
    for i, name in enumerate(names):
        properties = {"name": {"const": name}, family.arguments_key: {"$ref": f"#/$defs/tool-{i}"}}
        if family.name == "mistral":
            properties["id"] = MISTRAL_ID
        calls.append({"type": "object", "properties": properties,
                      "required": ["name", family.arguments_key], "additionalProperties": False})
    call = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if family.name in ("hermes", "llama3"):
        return call
    array = {"type": "array", "items": call, "minItems": 1, "maxItems": MAX_PARALLEL_CALLS if parallel else 1}
    if family.name == "mistral":
        return array
    return {"type": "object", "properties": {"tool_calls": array}, "required": ["tool_calls"],
            "additionalProperties": False}


def _calls_rule(family: Family, call_rule: str, parallel: bool) -> str:
    if family.name == "hermes":
        more = MAX_PARALLEL_CALLS - 1
        return f'( tc-block ( [ \\n]{{0,2}} tc-block ){{0,{more}}} )' if parallel else "tc-block"
    if family.call_open:  # mistral: the opener, then the array of calls
        return f"( {_literal(family.call_open)} {call_rule} )"
    return call_rule


def _relocated(schema: dict, base: str) -> dict:
    """A deep copy of `schema` whose local `$ref`s point where it sits in the document."""
    out = copy.deepcopy(schema)
    pending: list[object] = [out]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/"):
                node["$ref"] = base + ref[1:]
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return out


def _literal(text: str) -> str:
    """A GBNF string literal."""
    return json.dumps(text)


def _regex_literal(text: str) -> str:
    return "".join("\\" + c if c in "\\^$.|?*+()[]{}/" else c for c in text)


def _text_without(marker: str) -> str:
    """GBNF for any text that does not contain `marker` (which then closes it): the automaton
    that tracks how much of the marker the text ends with, one alternative per step."""
    if not marker:
        return '""'
    chars = sorted(set(marker))
    others = "[^" + "".join(_class_char(c) for c in chars) + "]"
    steps = []
    for state in range(len(marker)):
        moves = [f"{others} tc-tw-0"]
        for char in chars:
            following = _kmp_next(marker, state, char)
            if following < len(marker):  # reaching the whole marker is not text
                moves.append(f"{_literal(char)} tc-tw-{following}")
        steps.append(f"tc-tw-{state} ::= ( {' | '.join(moves)} )?")
    return "tc-tw-0\n" + "\n".join(steps)


def _kmp_next(marker: str, state: int, char: str) -> int:
    """How much of `marker` the text ends with after `char`, having ended with `state` chars of it."""
    text = marker[:state] + char
    for length in range(min(len(text), len(marker)), 0, -1):
        if text.endswith(marker[:length]):
            return length
    return 0


def _class_char(char: str) -> str:
    return "\\" + char if char in "^-]\\[" else char
