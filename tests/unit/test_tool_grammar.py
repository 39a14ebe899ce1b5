"""Tool-call grammars without a model: lazy `Grammar` triggers (digest, bounds), the plan's
checks of tools and tool_choice, the GBNF around llama_cpp's converter, and the triggers."""
from __future__ import annotations

import hashlib
import re

import pytest

from localllm import constraints as c
from localllm.chat.families import FAMILIES, GENERIC, HERMES, LLAMA3, MISTRAL, with_reasoning
from localllm.chat.types import ToolChoice, ToolChoiceMode, ToolSpec
from localllm.constraints import Grammar
from localllm.engine.llama_backend.grammar import tool_grammar
from localllm.tool_grammar import MAX_TOOLS, plan_tool_grammar, triggers_for
from localllm.types import InvalidParam

REQUIRED = ToolChoice(ToolChoiceMode.REQUIRED)
AUTO = ToolChoice(ToolChoiceMode.AUTO)
NONE = ToolChoice(ToolChoiceMode.NONE)
WEATHER = ToolSpec("get_weather", "Weather", {"type": "object", "properties": {"city": {"type": "string"}},
                                              "required": ["city"]})
ADD = ToolSpec("add", "Sum", {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                              "required": ["a", "b"]})


# --- Grammar.triggers -------------------------------------------------------------------------

def test_a_plain_grammar_keeps_its_digest_and_triggers_are_part_of_a_lazy_ones():
    text = 'root ::= "a"'
    plain = Grammar(text)
    assert plain.digest == hashlib.sha256(text.encode()).hexdigest() and not plain.is_lazy
    lazy, other = Grammar(text, ("(<a>)$",)), Grammar(text, ("(<b>)$",))
    assert lazy.is_lazy and len({plain.digest, lazy.digest, other.digest}) == 3
    assert Grammar(text, ("(<a>)$",)).digest == lazy.digest and Grammar(text, ("(<a>)$",)) == lazy
    assert lazy != plain
    assert Grammar(text, ["(<a>)$"]).triggers == ("(<a>)$",)  # a list is kept as a tuple


@pytest.mark.parametrize("triggers", [
    ("",), ("a\0",), ("x" * (c.MAX_TRIGGER_CHARS + 1),), ("(a",), ("a*",), ("a+",), ("[a]{3,}",),
    (f"a{{1,{c.MAX_TRIGGER_REPEAT + 1}}}",), ("(?=a)",), ("(?P<n>a)",), ("(?i)a",), (r"\bword",), (r"\Aa",),
    ("a",) * (c.MAX_TRIGGERS + 1), (3,), "abc",
])
def test_triggers_past_the_bounds_or_outside_the_portable_syntax_are_refused(triggers):
    with pytest.raises(InvalidParam):
        Grammar('root ::= "a"', triggers)


def test_portable_bounded_triggers_are_accepted():
    Grammar('root ::= "a"', (r'^\s{0,8}(\{) ?"k"$', r"(\[X\])(?:[ \n*+]?)?$", r"a{3}", "(?:a|b)?"))


@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
def test_each_familys_trigger_is_a_valid_trigger(family):
    assert Grammar('root ::= "a"', triggers_for(family)).is_lazy


def start_of_trigger(pattern: str, text: str) -> int | None:
    """Where llama.cpp starts feeding the grammar (llama_grammar_trigger_pattern::find)."""
    pattern = pattern.removesuffix("$") + r"\Z"  # ECMAScript's `$` is Python's `\Z`
    found = re.match(pattern, text) if pattern.startswith("^") else re.search(pattern, text)
    if found is None:
        return None
    return next((found.start(i) for i in range(1, (found.lastindex or 0) + 1) if found.group(i)), found.start())


@pytest.mark.parametrize("family, text, replayed", [
    (HERMES, "Let me check. <tool_call>", "<tool_call>"),
    (HERMES, 'ok <tool_call>\n{"', '<tool_call>\n{"'),
    (HERMES, "<tool_call>\n{ ", "<tool_call>\n{ "),
    (HERMES, "<tool_call>x", None),
    (HERMES, "<tool_call>\n{ \n", None),  # a token past the opener that no call starts with: stays asleep
    (HERMES, '<tool_call>\n{"name', None),
    (MISTRAL, "[TOOL_CALLS]", "[TOOL_CALLS]"),
    (MISTRAL, 'x[TOOL_CALLS][{"', '[TOOL_CALLS][{"'),
    (MISTRAL, "[TOOL_CALLS] [", None),
    (LLAMA3, ' {"name"', '{"name"'),
    (LLAMA3, '\n{ "name": "', '{ "name": "'),
    (LLAMA3, 'Here: {"name":', None),  # bare JSON triggers only at the reply's start
    (LLAMA3, '{"city":', None),
    (LLAMA3, '<|python_tag|>{"name":', '{"name":'),
    (LLAMA3, '{"name": "get', None),
    (GENERIC, '{"tool_calls": [{"', '{"tool_calls": [{"'),
    (GENERIC, '{"name":', None),
])
def test_triggers_wake_only_on_a_call_start_and_replay_only_what_a_call_starts_with(family, text, replayed):
    (pattern,) = triggers_for(family)
    start = start_of_trigger(pattern, text)
    assert (None if start is None else text[start:]) == replayed


# --- the plan: tools, tool_choice, bounds ---------------------------------------------------------

def refused(param: str, tools=(WEATHER,), choice=REQUIRED, response_schema=None) -> str:
    with pytest.raises(InvalidParam) as caught:
        plan_tool_grammar(HERMES, list(tools), choice, False, response_schema)
    assert caught.value.param == param
    return str(caught.value)


@pytest.mark.parametrize("parameters", [
    {"type": "object", "properties": {"s": {"type": "string", "maxLength": 10**8}}},
    {"type": "object", "properties": {"s": {"$ref": "#/$defs/missing"}}},
    {"type": "object", "properties": {"s": {"type": "wat"}}},
    {"type": "string"},
    "not a schema",
])
def test_a_bad_tool_schema_is_a_400_naming_the_tool(parameters):
    message = refused("tools", [WEATHER, ToolSpec("broken_tool", "", parameters)])
    assert "broken_tool" in message and "response_format" not in message


def test_tool_choice_and_counts():
    assert "nope" in refused("tool_choice", choice=ToolChoice(ToolChoiceMode.NAMED, "nope"))
    refused("tool_choice", tools=())
    many = [ToolSpec(f"t{i}", "", {"type": "object"}) for i in range(MAX_TOOLS + 1)]
    assert str(MAX_TOOLS) in refused("tools", tools=many)
    refused("response_format", choice=AUTO, response_schema={"type": "string", "maxLength": 10**8})
    assert plan_tool_grammar(HERMES, [WEATHER], NONE, True) is None
    assert plan_tool_grammar(HERMES, [], AUTO, True) is None


def test_many_tools_past_the_grammar_bound_together_are_refused():
    big = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 900} for i in range(40)}}
    tools = [ToolSpec(f"t{i}", "", big) for i in range(MAX_TOOLS)]
    assert "bytes" in refused("tools", tools=tools)


def test_the_callers_schemas_are_not_changed():
    parameters = {"type": "object", "properties": {"x": {"$ref": "#/$defs/X"}}, "$defs": {"X": {"type": "integer"}}}
    tool_grammar(HERMES, [ToolSpec("t", "", parameters)], REQUIRED, False)
    assert parameters["properties"]["x"] == {"$ref": "#/$defs/X"}


# --- the grammar text ---------------------------------------------------------------------------

def rules(grammar: Grammar) -> dict[str, str]:
    return dict(line.split(" ::= ", 1) for line in grammar.text.splitlines() if " ::= " in line)


def test_hermes_blocks_one_call_or_several_when_parallel():
    one, several = (tool_grammar(HERMES, [WEATHER, ADD], REQUIRED, p) for p in (False, True))
    assert rules(one)["root"] == "tc-block" and "tc-block ){0,7}" in rules(several)["root"]  # MAX_PARALLEL_CALLS
    assert rules(one)["tc-block"] == '"<tool_call>" [ \\n]? tc-call [ \\n]? "</tool_call>"'
    assert rules(one)["tc-call"] == "tc-call-0 | tc-call-1"
    assert rules(one)["tc-call-1-name"] == '"\\"add\\""' and not one.is_lazy


@pytest.mark.parametrize("family, item", [(MISTRAL, "tc-call-item"), (GENERIC, "tc-call-tool-calls-item")])
def test_lists_of_calls_hold_exactly_one_unless_parallel(family, item):
    one, several = (rules(tool_grammar(family, [WEATHER], REQUIRED, p)) for p in (False, True))
    array = "tc-call" if family is MISTRAL else "tc-call-tool-calls"
    assert one[array] == f'"[" space {item} "]" space'
    nested = item
    for _ in range(7):  # MAX_PARALLEL_CALLS: 8 calls at most
        nested = f'{item} ("," space {nested})?'
    assert several[array] == f'"[" space {nested} "]" space'


def test_each_family_writes_its_own_call_shape():
    assert rules(tool_grammar(LLAMA3, [WEATHER], REQUIRED, True))["root"] == "tc-call"
    assert '"\\"parameters\\""' in rules(tool_grammar(LLAMA3, [WEATHER], REQUIRED, True))["tc-call-parameters-kv"]
    assert rules(tool_grammar(MISTRAL, [WEATHER], REQUIRED, False))["root"] == '( "[TOOL_CALLS]" tc-call )'
    assert "tc-call-tool-calls-kv" in rules(tool_grammar(GENERIC, [WEATHER], REQUIRED, False))["tc-call"]


def test_named_offers_only_that_tool():
    named = rules(tool_grammar(HERMES, [WEATHER, ADD], ToolChoice(ToolChoiceMode.NAMED, "add"), False))
    assert named["tc-call-name"] == '"\\"add\\""' and "tc-call-0" not in named


def test_two_tools_with_the_same_def_name_get_their_own_rules():
    def tool(name: str, kind: str) -> ToolSpec:
        return ToolSpec(name, "", {"type": "object", "properties": {"Item": {"$ref": "#/$defs/Item"}},
                                   "$defs": {"Item": {"type": "object", "properties": {"v": {"type": kind}}}}})
    text = tool_grammar(HERMES, [tool("one", "integer"), tool("two", "boolean")], REQUIRED, False).text
    assert "tc-ref-1-v-kv ::= " in text and "tc-ref-3-v-kv ::= " in text
    ints, bools = rules(Grammar(text))["tc-ref-1-v-kv"], rules(Grammar(text))["tc-ref-3-v-kv"]
    assert {ints.split()[-1], bools.split()[-1]} == {"integer", "boolean"}


def test_auto_is_lazy_and_auto_with_a_response_format_is_a_forced_choice():
    lazy = tool_grammar(HERMES, [WEATHER], AUTO, False)
    assert lazy.triggers == triggers_for(HERMES) and rules(lazy)["root"] == "tc-block"
    both = tool_grammar(HERMES, [WEATHER], AUTO, False, {"type": "object", "properties": {"x": {"type": "integer"}}})
    assert not both.is_lazy and rules(both)["root"] == "( tc-block | tc-response )"
    forced = tool_grammar(HERMES, [WEATHER], REQUIRED, False, {"type": "object"})
    assert "tc-response" not in forced.text  # a required call is the answer


def test_reasoning_families_may_think_first_or_must_close_an_opened_thought():
    family = with_reasoning(HERMES)
    optional = rules(tool_grammar(family, [WEATHER], REQUIRED, False))["root"]
    assert optional == '( "<think>" tc-think-text "</think>" [ \\n]{0,4} )? tc-block'
    opened = rules(tool_grammar(family, [WEATHER], REQUIRED, False, starts_in_reasoning=True))["root"]
    assert opened == 'tc-think-text "</think>" [ \\n]{0,4} tc-block'
    assert "think" not in rules(tool_grammar(family, [WEATHER], AUTO, False))["root"]
