"""chat/output.py: each family's model output -> content, reasoning and tool calls, the same for
every way the output can arrive in pieces (whole, every split into two, one character at a time).

Outputs are the ones llama.cpp's tests/test-chat.cpp expects each family's models to write
(Hermes 2 Pro / Qwen2.5 `<tool_call>`, Llama 3.x JSON, Mistral Nemo `[TOOL_CALLS][...]`, Mistral
Small 3.2 / Devstral `[TOOL_CALLS]name[ARGS]`, QwQ / DeepSeek-R1 `</think>` with the prompt's
`<think>` forced open), plus malformed and truncated ones.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field

import pytest

from localllm.chat.families import FAMILIES, GENERIC, HERMES, LLAMA3, MISTRAL, Family, with_reasoning
from localllm.chat.output import OutputParser, fold, tool_calls
from localllm.chat.types import (
    OutputEvent,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallArguments,
    ToolCallStarted,
    ToolSpec,
)

QWEN3 = with_reasoning(HERMES)
GENERATED_ID = re.compile(r"call_[A-Za-z0-9]{24}")


@dataclass(frozen=True)
class Case:
    name: str
    family: Family
    output: str
    content: str = ""
    reasoning: str = ""
    calls: list[tuple[str, dict]] = field(default_factory=list)
    ids: list[str] | None = None
    """The model's own call ids (mistral), else generated ones are expected."""
    starts_in_reasoning: bool = False
    parse_tools: bool = True
    parse_reasoning: bool = True
    tools: tuple[ToolSpec, ...] = ()

    def parser(self) -> OutputParser:
        return OutputParser(self.family, parse_tools=self.parse_tools, starts_in_reasoning=self.starts_in_reasoning,
                            parse_reasoning=self.parse_reasoning, tools=self.tools)


def run(case: Case, chunks: list[str]) -> list[OutputEvent]:
    parser = case.parser()
    events: list[OutputEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.close())
    return events


def splits(text: str):
    yield "whole", [text]
    for i in range(1, len(text)):
        yield f"at {i}", [text[:i], text[i:]]
    yield "characters", list(text)


def check_events(events: list[OutputEvent], case: Case) -> None:
    """Every event stream is well formed: no empty deltas, each call started once, in index
    order, before its arguments; the argument pieces make one JSON object."""
    started: list[int] = []
    for event in events:
        if isinstance(event, (TextDelta, ReasoningDelta)):
            assert event.text, events
        elif isinstance(event, ToolCallStarted):
            assert event.index == len(started), events
            started.append(event.index)
        else:
            assert isinstance(event, ToolCallArguments)
            assert started and event.index == started[-1], events
    for call in tool_calls(events):
        assert isinstance(json.loads(call.arguments), dict)
    if case.ids is None:
        assert all(GENERATED_ID.fullmatch(call.id) for call in tool_calls(events)), events


def check(case: Case) -> None:
    for how, chunks in splits(case.output):
        events = run(case, chunks)
        check_events(events, case)
        answer = fold(events)
        got = (answer.content, answer.reasoning, [(c.name, json.loads(c.arguments)) for c in answer.tool_calls])
        assert got == (case.content, case.reasoning, case.calls), f"{case.name}, split {how}"
        if case.ids is not None:
            assert [c.id for c in answer.tool_calls] == case.ids, f"{case.name}, split {how}"


HELLO = "Hello, world!\nWhat's up?"
SPECIAL = ("special_function", {"arg1": 1})
WITH_OPT = ("special_function_with_opt", {"arg1": 1, "arg2": 2})

HERMES_CASES = [
    Case("plain", HERMES, HELLO, content=HELLO),
    Case("one call (Hermes 2 Pro)", HERMES,
         '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}</tool_call>', calls=[SPECIAL]),
    Case("text then call", HERMES,
         HELLO + '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}</tool_call>',
         content=HELLO, calls=[SPECIAL]),
    Case("two calls, newlines between (Qwen2.5)", HERMES,
         '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}\n</tool_call>\n'
         '<tool_call>\n{"name": "special_function_with_opt", "arguments": {"arg1": 1, "arg2": 2}}\n</tool_call>\n',
         calls=[SPECIAL, WITH_OPT]),
    Case("text, call, text", HERMES,
         'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris <tool_call>"}}\n'
         '</tool_call>\nDone.', content="Let me check.\nDone.", calls=[("get_weather", {"city": "Paris <tool_call>"})]),
    Case("arguments as a JSON string, unicode", HERMES,
         '<tool_call>{"name": "say", "arguments": "{\\"text\\": \\"h\\u00e9 \\u2603\\"}"}</tool_call>',
         calls=[("say", {"text": "hé ☃"})]),
    Case("no arguments", HERMES, '<tool_call>{"name": "now"}</tool_call>', calls=[("now", {})]),
    Case("two calls in one block", HERMES,
         '<tool_call>\n{"name": "a", "arguments": {}}\n{"name": "b", "arguments": {"x": [1, 2]}}\n</tool_call>',
         calls=[("a", {}), ("b", {"x": [1, 2]})]),
    Case("closer never written", HERMES, 'Sure.\n<tool_call>\n{"name": "a", "arguments": {"k": "v"}}\n',
         content="Sure.", calls=[("a", {"k": "v"})]),
    Case("malformed JSON is text", HERMES, 'A <tool_call>{"name": "a", "arguments": {]}</tool_call> B',
         content='A <tool_call>{"name": "a", "arguments": {]}</tool_call> B'),
    Case("name not a string is text", HERMES, '<tool_call>{"name": 3, "arguments": {}}</tool_call>',
         content='<tool_call>{"name": 3, "arguments": {}}</tool_call>'),
    Case("arguments not an object is text", HERMES, '<tool_call>{"name": "a", "arguments": [1]}</tool_call>',
         content='<tool_call>{"name": "a", "arguments": [1]}</tool_call>'),
    Case("NaN is not JSON", HERMES, '<tool_call>{"name": "a", "arguments": {"x": NaN}}</tool_call>',
         content='<tool_call>{"name": "a", "arguments": {"x": NaN}}</tool_call>'),
    Case("a bad call among good ones", HERMES,
         '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>oops</tool_call>\n'
         '<tool_call>{"name": "b", "arguments": {}}</tool_call>',
         content="<tool_call>oops</tool_call>", calls=[("a", {}), ("b", {})]),
    Case("truncated call (max_tokens) is text", HERMES,
         'Hi <tool_call>\n{"name": "a", "arguments": {"k": "v',
         content='Hi <tool_call>\n{"name": "a", "arguments": {"k": "v'),
    Case("opener prefix at the end is text", HERMES, "a < b <tool", content="a < b <tool"),
    Case("a tag in prose is text", HERMES, "Wrap calls in <tool_call> tags.\n<tool_call> ends them. <tool_call>\n",
         content="Wrap calls in <tool_call> tags.\n<tool_call> ends them. <tool_call>\n"),
    Case("near-openers are text", HERMES, "<tool_calls> <tool_cal> </tool_call>",
         content="<tool_calls> <tool_cal> </tool_call>"),
    Case("parse_tools off", HERMES, 'x <tool_call>{"name": "a", "arguments": {}}</tool_call>',
         content='x <tool_call>{"name": "a", "arguments": {}}</tool_call>', parse_tools=False),
]

def tool(name: str, **properties: str) -> ToolSpec:
    return ToolSpec(name, "", {"type": "object", "properties": {k: {"type": v} for k, v in properties.items()}})


XML_TOOLS = (tool("special_function", arg1="integer"), tool("special_function_with_opt", arg1="integer", arg2="integer"),
             tool("python", code="string"), tool("edit", filename="string", oldString="string", newString="string"),
             tool("search", query="string", filters="object", limit=["integer", "null"]))

QWEN3_CODER_CASES = [  # Qwen3-Coder / Qwen3.5 write XML inside <tool_call> (llama.cpp's Qwen3.5 and Qwen3-Coder tests)
    Case("XML call typed by the schema", HERMES,
         "<tool_call>\n<function=special_function>\n<parameter=arg1>\n1\n</parameter>\n</function>\n</tool_call>",
         calls=[SPECIAL], tools=XML_TOOLS),
    Case("XML without tools: values are text", HERMES,
         "<tool_call>\n<function=special_function>\n<parameter=arg1>\n1\n</parameter>\n</function>\n</tool_call>",
         calls=[("special_function", {"arg1": "1"})]),
    Case("two XML calls", HERMES,
         "<tool_call>\n<function=special_function>\n<parameter=arg1>\n1\n</parameter>\n</function>\n</tool_call>\n"
         "<tool_call>\n<function=special_function_with_opt>\n<parameter=arg1>\n1\n</parameter>\n"
         "<parameter=arg2>\n2\n</parameter>\n</function>\n</tool_call>",
         calls=[SPECIAL, WITH_OPT], tools=XML_TOOLS),
    Case("XML code keeps its lines and indent", HERMES,
         "<tool_call>\n<function=python>\n<parameter=code>\n    print(\"Hello, world!\")\n\nhello()\n"
         "</parameter>\n</function>\n</tool_call>",
         calls=[("python", {"code": '    print("Hello, world!")\n\nhello()'})], tools=XML_TOOLS),
    Case("XML value ending in a newline keeps it", HERMES,
         "<tool_call>\n<function=edit>\n<parameter=filename>\nfoo.c\n</parameter>\n<parameter=oldString>\n"
         "#iclunde\n</parameter>\n<parameter=newString>\n#include\n\n</parameter>\n</function>\n</tool_call>",
         calls=[("edit", {"filename": "foo.c", "oldString": "#iclunde", "newString": "#include\n"})], tools=XML_TOOLS),
    Case("XML objects, nullable ints, bad JSON stays text", HERMES,
         "<tool_call>\n<function=search>\n<parameter=query>\n42\n</parameter>\n<parameter=filters>\n"
         '{"lang": "en"}\n</parameter>\n<parameter=limit>\nnull\n</parameter>\n</function>\n</tool_call>'
         "<tool_call><function=search><parameter=filters>{oops</parameter></function></tool_call>",
         calls=[("search", {"query": "42", "filters": {"lang": "en"}, "limit": None}),
                ("search", {"filters": "{oops"})], tools=XML_TOOLS),
    Case("broken XML is text", HERMES, "<tool_call><function=a><parameter=x>1</function></tool_call>",
         content="<tool_call><function=a><parameter=x>1</function></tool_call>", tools=XML_TOOLS),
]

LLAMA3_CASES = [
    Case("plain", LLAMA3, HELLO, content=HELLO),
    Case("bare call (Llama 3.1)", LLAMA3, '{"name": "special_function", "parameters": {"arg1": 1}}',
         calls=[SPECIAL]),
    Case("python tag", LLAMA3, '<|python_tag|>{"name": "special_function", "parameters": {"arg1": 1}}',
         calls=[SPECIAL]),
    Case("type function, arguments key", LLAMA3,
         '\n{"type": "function", "name": "special_function", "arguments": {"arg1": 1}}\n', calls=[SPECIAL]),
    Case("several calls separated by ;", LLAMA3,
         '{"name": "special_function", "parameters": {"arg1": 1}}; '
         '{"name": "special_function_with_opt", "parameters": {"arg1": 1, "arg2": 2}}', calls=[SPECIAL, WITH_OPT]),
    Case("a list of calls", LLAMA3, '[{"name": "a", "parameters": {}}, {"name": "b", "parameters": {}}]',
         calls=[("a", {}), ("b", {})]),
    Case("call then text", LLAMA3, '{"name": "a", "parameters": {"q": "}"}}\nI called a.',
         content="I called a.", calls=[("a", {"q": "}"})]),
    Case("JSON that is no call is text", LLAMA3, '{"answer": 42, "name": null}',
         content='{"answer": 42, "name": null}'),
    Case("a call after text is text", LLAMA3, 'Sure: {"name": "a", "parameters": {}}',
         content='Sure: {"name": "a", "parameters": {}}'),
    Case("truncated call is text", LLAMA3, '<|python_tag|>{"name": "a", "parameters": {"q": [1, ',
         content='<|python_tag|>{"name": "a", "parameters": {"q": [1, '),
    Case("python tag then no JSON is text", LLAMA3, '<|python_tag|>brave_search.call(query="x")',
         content='<|python_tag|>brave_search.call(query="x")'),
    Case("fenced call", LLAMA3, '```json\n{"name": "a", "parameters": {"x": "`"}}\n```\n', calls=[("a", {"x": "`"})]),
    Case("fenced JSON that is no call is text", LLAMA3, '```json\n{"x": 1}\n```', content='```json\n{"x": 1}\n```'),
    Case("other fences are text", LLAMA3, '```python\n{"name": "a"}\n```', content='```python\n{"name": "a"}\n```'),
    Case("parse_tools off", LLAMA3, '{"name": "a", "parameters": {}}', content='{"name": "a", "parameters": {}}',
         parse_tools=False),
]

MISTRAL_CASES = [
    Case("plain", MISTRAL, HELLO, content=HELLO),
    Case("JSON list with id (Nemo)", MISTRAL,
         '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}, "id": "123456789"}]',
         calls=[SPECIAL], ids=["123456789"]),
    Case("JSON list, two calls, space after opener", MISTRAL,
         '[TOOL_CALLS] [{"name": "a", "arguments": {"x": "[TOOL_CALLS]"}, "id": "abcDEF123"}, '
         '{"name": "b", "arguments": {}, "id": "ghiJKL456"}]',
         calls=[("a", {"x": "[TOOL_CALLS]"}), ("b", {})], ids=["abcDEF123", "ghiJKL456"]),
    Case("name[ARGS] (Devstral)", MISTRAL, '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}', calls=[SPECIAL]),
    Case("text then name[ARGS]", MISTRAL, HELLO + '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}',
         content=HELLO, calls=[SPECIAL]),
    Case("two calls with [CALL_ID] (Mistral Small 3.2)", MISTRAL,
         '[TOOL_CALLS]special_function[CALL_ID]000000001[ARGS]{"arg1": 1}'
         '[TOOL_CALLS]special_function_with_opt[CALL_ID]000000002[ARGS]{"arg1": 1, "arg2": 2}',
         calls=[SPECIAL, WITH_OPT], ids=["000000001", "000000002"]),
    Case("a bare list when the detokeniser dropped [TOOL_CALLS]", MISTRAL,
         ' [{"name": "special_function", "arguments": {"arg1": 1}, "id": "123456789"}]',
         calls=[SPECIAL], ids=["123456789"]),
    Case("a bare list that is no calls is text", MISTRAL, '[{"a": 1}] and [1, 2]', content='[{"a": 1}] and [1, 2]'),
    Case("a list later in the text is text", MISTRAL, 'See [{"name": "f", "arguments": {}}]',
         content='See [{"name": "f", "arguments": {}}]'),
    Case("brackets at the start are text", MISTRAL, "[ x ] [TOOL]", content="[ x ] [TOOL]"),
    Case("opener with no call is text", MISTRAL, "See [TOOL_CALLS] here [TOOL", content="See [TOOL_CALLS] here [TOOL"),
    Case("bad name is text", MISTRAL, '[TOOL_CALLS]bad name[ARGS]{}', content='[TOOL_CALLS]bad name[ARGS]{}'),
    Case("list with a non-call is text", MISTRAL, '[TOOL_CALLS][{"name": "a", "arguments": {}}, 3]',
         content='[TOOL_CALLS][{"name": "a", "arguments": {}}, 3]'),
    Case("truncated is text", MISTRAL, 'ok [TOOL_CALLS]f[ARGS]{"a": "', content='ok [TOOL_CALLS]f[ARGS]{"a": "'),
]

GENERIC_CASES = [
    Case("plain", GENERIC, HELLO, content=HELLO),
    Case("tool_calls", GENERIC,
         '{"tool_calls": [{"name": "special_function", "arguments": {"arg1": 1}}, '
         '{"name": "special_function_with_opt", "arguments": {"arg1": 1, "arg2": 2}}]}',
         calls=[SPECIAL, WITH_OPT]),
    Case("tool_call", GENERIC, ' {"tool_call": {"name": "special_function", "arguments": {"arg1": 1}}}\n',
         calls=[SPECIAL]),
    Case("response", GENERIC, '{"response": "Hello, \\"world\\"!"}', content='Hello, "world"!'),
    Case("other JSON is text", GENERIC, '{"answer": 1}', content='{"answer": 1}'),
    Case("empty tool_calls is text", GENERIC, '{"tool_calls": []}', content='{"tool_calls": []}'),
    Case("truncated is text", GENERIC, '{"tool_calls": [{"name": "a", "argu',
         content='{"tool_calls": [{"name": "a", "argu'),
    Case("fenced", GENERIC, '```\n{"tool_calls": [{"name": "a", "arguments": {}}]}\n``` Done.',
         content="Done.", calls=[("a", {})]),
    Case("unclosed fence", GENERIC, '```json\n{"tool_calls": [{"name": "a", "arguments": {}}]}',
         calls=[("a", {})]),
    Case("text then calls, as the fallback renders earlier calls", GENERIC,
         'Let me look.\n{"tool_calls": [{"name": "special_function", "arguments": {"arg1": 1}}]}',
         content="Let me look.", calls=[SPECIAL]),
    Case("after text only a calls object counts", GENERIC,
         'So {"response": "x"} and {"tool_calls": 5} and {"tool_calls": [{"name": "a", "arguments": {}}]} end',
         content='So {"response": "x"} and {"tool_calls": 5} and end', calls=[("a", {})]),
    Case("too deep after text is text", GENERIC, 'x {"tool_calls"' + "[" * 300 + " y",
         content='x {"tool_calls"' + "[" * 300 + " y"),
]

REASONING_CASES = [
    Case("think block then text (Qwen3)", QWEN3, "<think>\nI'm\nthinking\n</think>\n\n" + HELLO,
         content=HELLO, reasoning="I'm\nthinking"),
    Case("forced open (QwQ)", QWEN3, "Let me think about this...\n</think>\nThe answer is 42.",
         content="The answer is 42.", reasoning="Let me think about this...", starts_in_reasoning=True),
    Case("forced open, empty reasoning (DeepSeek-R1)", QWEN3, "</think>" + HELLO, content=HELLO,
         starts_in_reasoning=True),
    Case("forced open on a family without markers", HERMES, "I'm\nthinking</think>" + HELLO,
         content=HELLO, reasoning="I'm\nthinking", starts_in_reasoning=True),
    Case("reasoning then call", QWEN3,
         "<think>\nI'm\nthinking\n</think>\n\n"
         '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}\n</tool_call>',
         reasoning="I'm\nthinking", calls=[SPECIAL]),
    Case("call opener inside reasoning is reasoning", QWEN3,
         '<think>Maybe <tool_call>{"name": "a"}</tool_call>?</think>OK',
         content="OK", reasoning='Maybe <tool_call>{"name": "a"}</tool_call>?'),
    Case("never closed: all reasoning", QWEN3, "<think>\nStill thinking </thi", reasoning="Still thinking </thi"),
    Case("forced open, never closed", QWEN3, "Hmm, so", reasoning="Hmm, so", starts_in_reasoning=True),
    Case("no think block", QWEN3, "  " + HELLO, content="  " + HELLO),
    Case("think later in the text is content", QWEN3, "Hi <think>x</think>", content="Hi <think>x</think>"),
    Case("family without markers keeps them", HERMES, "<think>x</think>y", content="<think>x</think>y"),
    Case("parse_reasoning off keeps the text", QWEN3, "<think>x</think>y", content="<think>x</think>y",
         parse_reasoning=False),
    Case("parse_reasoning off, forced open: opener put back", QWEN3, "x\n</think>y", content="<think>x\n</think>y",
         parse_reasoning=False, starts_in_reasoning=True),
    Case("reasoning on a llama3 family", with_reasoning(LLAMA3),
         '<think>call it</think>\n{"name": "a", "parameters": {}}', reasoning="call it", calls=[("a", {})]),
    Case("reasoning on a mistral family", with_reasoning(MISTRAL),
         "<think>x</think>[TOOL_CALLS]f[ARGS]{}", reasoning="x", calls=[("f", {})]),
]

ALL_CASES = HERMES_CASES + QWEN3_CODER_CASES + LLAMA3_CASES + MISTRAL_CASES + GENERIC_CASES + REASONING_CASES


@pytest.mark.parametrize("case", ALL_CASES, ids=[f"{c.family.name}-{c.name}" for c in ALL_CASES])
def test_every_split_folds_to_the_same_answer(case: Case) -> None:
    check(case)


def test_families_covered() -> None:
    assert {c.family.name for c in ALL_CASES} == set(FAMILIES)


def feed_all(parser: OutputParser, *chunks: str) -> list[list[OutputEvent]]:
    return [parser.feed(chunk) for chunk in chunks]


def test_text_goes_out_as_soon_as_it_cannot_open_a_call() -> None:
    parser = OutputParser(HERMES, parse_tools=True)
    assert feed_all(parser, "Hello", " <to", "y>", " <tool_call>", '{"name": "f"}') == [
        [TextDelta("Hello")], [], [TextDelta(" <toy>")], [], []]
    started, arguments = parser.feed("</tool_call>")
    assert isinstance(started, ToolCallStarted) and (started.index, started.name) == (0, "f")
    assert arguments == ToolCallArguments(0, "{}")
    assert parser.feed(" bye") == [TextDelta(" bye")]  # text came before the call: the gap stays
    assert parser.close() == []


def test_a_tag_in_prose_does_not_hold_the_rest_back() -> None:
    parser = OutputParser(HERMES, parse_tools=True)
    assert feed_all(parser, "Use <tool_call>", " tags ", "to call.") == [
        [TextDelta("Use")], [TextDelta(" <tool_call> tags")], [TextDelta(" to call.")]]


def test_streaming_order_per_family() -> None:
    llama = OutputParser(LLAMA3, parse_tools=True)
    assert llama.feed("Sure") == [TextDelta("Sure")]  # not JSON: passed on at once
    mistral = OutputParser(MISTRAL, parse_tools=True)
    assert mistral.feed("ok [TOOL") == [TextDelta("ok")]
    assert mistral.feed("S]") == [TextDelta(" [TOOLS]")]
    reasoning = OutputParser(QWEN3, parse_tools=True)
    assert reasoning.feed("<thi") == []
    assert reasoning.feed("nk>step one ") == [ReasoningDelta("step one")]
    assert reasoning.feed("</th") == []
    assert reasoning.feed("ink>\nAnswer") == [TextDelta("Answer")]
    assert reasoning.close() == []


def test_fold_helpers() -> None:
    events = [TextDelta("a"), ToolCallStarted(1, "call_2", "g"), ToolCallStarted(0, "call_1", "f"),
              ToolCallArguments(0, '{"x": '), ToolCallArguments(1, "{}"), ToolCallArguments(0, "1}"),
              ReasoningDelta("r"), TextDelta("b")]
    assert tool_calls(events) == [ToolCall("call_1", "f", '{"x": 1}'), ToolCall("call_2", "g", "{}")]
    answer = fold(events)
    assert (answer.content, answer.reasoning) == ("ab", "r")


def test_ids_are_fresh_per_call() -> None:
    case = HERMES_CASES[3]
    ids = [c.id for c in fold(run(case, [case.output])).tool_calls + fold(run(case, [case.output])).tool_calls]
    assert len(set(ids)) == 4


@pytest.mark.parametrize("text", [
    "[" * 100_000, "{" * 100_000 + "}" * 100_000, '"\\' * 1000, "\x00\ud800\uffff",
    '{"name": "a", "arguments": {"x": 1e999}}', '{"name": "a", "arguments": {"x": ' + "9" * 5000 + "}}",
])
@pytest.mark.parametrize("family", [HERMES, LLAMA3, MISTRAL, GENERIC, QWEN3])
def test_hostile_output_never_raises_and_comes_back_as_text(family: Family, text: str) -> None:
    for output in (text, "<tool_call>" + text + "</tool_call>", "[TOOL_CALLS]" + text, "<think>" + text):
        parser = OutputParser(family, parse_tools=True)
        answer = fold(parser.feed(output) + parser.close())
        assert not answer.tool_calls
        assert answer.content + answer.reasoning in (output, output.strip(), text.strip(), text)


PIECES = ["<tool_call>", "</tool_call>", "<tool_", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "<think>", "</think>",
          "<|python_tag|>", "```json\n", "```", '{"name": "f", "arguments": {"a": [1, "}"]}}', '{"name": "g"}',
          '{"tool_calls": [{"name": "h", "arguments": {}}]}', '{"response": "r"}', "[", "]", "{", "}", '"', "\\",
          "; ", " ", "\n", "hello", "f", "<function=f>", "<parameter=a>", "</parameter>", "</function>", "é☃"]


@pytest.mark.parametrize("family", [HERMES, LLAMA3, MISTRAL, GENERIC, QWEN3], ids=lambda f: f.name + str(f.reasons))
@pytest.mark.parametrize("starts_in_reasoning", [False, True])
def test_random_outputs_fold_the_same_however_they_are_split(family: Family, starts_in_reasoning: bool) -> None:
    """Outputs made of openers, closers, JSON and text in random order: every way of cutting
    them up (a random split into 1-6 character pieces, single characters) gives the whole
    output's answer, and the event stream is well formed."""
    rng = random.Random(f"{family.name}{starts_in_reasoning}")
    for _ in range(300):
        output = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))
        case = Case("random", family, output, starts_in_reasoning=starts_in_reasoning, ids=[])
        whole = fold(run(case, [output]))
        cuts, at = [], 0
        while at < len(output):
            step = rng.randint(1, 6)
            cuts.append(output[at:at + step])
            at += step
        for chunks in (cuts, list(output)):
            events = run(case, chunks)
            check_events(events, case)
            got = fold(events)
            assert (got.content, got.reasoning, [(c.name, c.arguments) for c in got.tool_calls]) == (
                whole.content, whole.reasoning, [(c.name, c.arguments) for c in whole.tool_calls]), repr(output)


@pytest.mark.parametrize("family", [HERMES, LLAMA3, MISTRAL, GENERIC, QWEN3], ids=lambda f: f.name + str(f.reasons))
@pytest.mark.parametrize("before", ["", "hi", "<think>x", "<tool_call>", '<tool_call>{"name": "f"}</tool_call>',
                                    '{"name": "f", "parameters": {}}', "[TOOL_CALLS]"])
def test_held_whitespace_is_not_rescanned_per_piece(family: Family, before: str, monkeypatch) -> None:
    """A model writing whitespace for a long time (held: it may precede a call or end the
    reasoning) is not rescanned whole with every piece: the characters the state machines
    step over grow linearly (they grew with the square: seconds of event-loop time per reply)."""
    parser = OutputParser(family, parse_tools=True)
    events = parser.feed(before)
    scanned = []
    for cls in {type(parser), type(parser._calls)}:
        original = cls._step
        monkeypatch.setattr(cls, "_step", lambda self, *a, _o=original: scanned.append(len(self._buf)) or _o(self, *a))
    for _ in range(2000):
        events += parser.feed(" \n")
    assert sum(scanned) < 50 * 2000
    events += parser.feed("done") + parser.close()
    reference = OutputParser(family, parse_tools=True)
    whole, got = fold(reference.feed(before + " \n" * 2000 + "done") + reference.close()), fold(events)
    assert (got.content, got.reasoning, len(got.tool_calls)) == (whole.content, whole.reasoning, len(whole.tool_calls))


def test_llama3_separators_after_a_call_are_not_held_for_rescanning() -> None:
    parser = OutputParser(LLAMA3, parse_tools=True)
    parser.feed('{"name": "f", "parameters": {}}')
    for _ in range(1000):
        parser.feed(";")
    assert parser._calls._buf == ""  # moved aside once, not lstripped again with every piece
    assert fold(parser.feed(' {"name": "g", "parameters": {}}') + parser.close()).tool_calls[0].name == "g"


def test_mistral_bracket_then_endless_whitespace_is_text() -> None:
    """`[` may open Mistral's bare call list; whitespace after it is waited for only so long."""
    parser = OutputParser(MISTRAL, parse_tools=True)
    assert parser.feed("[") == []
    assert fold([e for _ in range(100) for e in parser.feed(" ")]).content.startswith("[")
