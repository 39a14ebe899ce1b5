"""Tool-call grammars on the bundled model: forced calls (tool_choice required / named) parse and
validate against their schemas for every family, seed after seed at temperature 1.0; several
calls only when parallel; a lazy grammar (auto) leaves the text alone until the family's call
opener and constrains it after; what a trigger replays is always text the grammar accepts."""
from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import llama_cpp.llama_cpp as ll  # noqa: I001  (before numpy, as in llama_backend)
import numpy as np
from localllm.chat.families import FAMILIES, GENERIC, HERMES, LLAMA3, MISTRAL, Family, with_reasoning
from localllm.chat.types import ToolChoice, ToolChoiceMode, ToolSpec
from localllm.compose import engine_for
from localllm.config import Config
from localllm.constraints import Grammar
from localllm.engine.async_engine import AsyncEngine
from localllm.engine.llama_backend import BackendConfig, LlamaBackend
from localllm.engine.llama_backend import grammar as gbnf
from localllm.engine.llama_backend.sampling import _apply, _candidates  # noqa: PLC2701
from localllm.types import FinishReason, InvalidParam, SamplingParams
from localllm.tool_grammar import MAX_PARALLEL_CALLS

pytestmark = pytest.mark.integration

NUM_SLOTS = 4
CTX = 8192
SEEDS = range(4)
WEATHER = ToolSpec("get_weather", "Current weather", {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 24},
                   "days": {"type": "integer"},
                   "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "days"], "additionalProperties": False})
SEARCH = ToolSpec("search", "Web search", {
    "type": "object",
    "properties": {"query": {"type": "string", "maxLength": 32},
                   "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}, "maxItems": 3},
                   "exact": {"type": "boolean"}},
    "required": ["query"], "additionalProperties": False,
    "$defs": {"Tag": {"type": "string", "maxLength": 8}}})
ADD = ToolSpec("add", "Sum two integers", {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"], "additionalProperties": False})
TOOLS = [WEATHER, SEARCH, ADD]
PROMPT = "User: What is the weather in Paris for the next 3 days?\nAssistant: "


@pytest.fixture(scope="module")
async def engine(model_path: Path, data_dir: Path):
    config = Config.from_flat({"parallel": NUM_SLOTS, "ctx": CTX, "threads": 2, "data_dir": str(data_dir)})
    engine = engine_for(LlamaBackend(BackendConfig(model_path, CTX, NUM_SLOTS, 512, 2)), "gemma3-270m", config)
    await engine.start()
    yield engine
    await engine.stop()


async def generate(engine: AsyncEngine, prompt: str, params: SamplingParams) -> tuple[str, FinishReason | None]:
    deltas = [d async for d in engine.generate(prompt, params)]
    return "".join(d.text for d in deltas), deltas[-1].finish_reason


async def samples(engine: AsyncEngine, grammar: Grammar, max_tokens: int = 200) -> list[tuple[str, FinishReason]]:
    return await asyncio.gather(*(generate(engine, PROMPT, SamplingParams(temperature=1.0, seed=seed,
                                                                          max_tokens=max_tokens, grammar=grammar))
                                  for seed in SEEDS))


# --- what the family wraps around its calls, and a small JSON Schema validator ---------------------

def calls_in(family: Family, text: str) -> list[dict]:
    """The call objects in a reply written in the family's format (raises if it is not)."""
    if family.name == "hermes":
        blocks = re.fullmatch(r"(?:[ \n]*<tool_call>[ \n]?(.*?)[ \n]?</tool_call>)+", text, re.DOTALL)
        assert blocks is not None, text
        return [json.loads(b) for b in re.findall(r"<tool_call>(.*?)</tool_call>", text, re.DOTALL)]
    if family.name == "mistral":
        assert text.startswith("[TOOL_CALLS]"), text
        return json.loads(text.removeprefix("[TOOL_CALLS]"))
    if family.name == "generic":
        wrapper = json.loads(text)
        assert list(wrapper) == ["tool_calls"], text
        return wrapper["tool_calls"]
    return [json.loads(text)]


def validate(value: object, schema: dict, root: dict) -> None:
    """Asserts `value` matches `schema` (the keywords these tests use)."""
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return validate(value, target, root)
    kinds = {"object": dict, "string": str, "array": list, "boolean": bool, "integer": int, "number": (int, float)}
    if "type" in schema:
        assert isinstance(value, kinds[schema["type"]]), (value, schema)
        assert schema["type"] not in ("integer", "number") or not isinstance(value, bool)
    if "enum" in schema:
        assert value in schema["enum"], (value, schema)
    if isinstance(value, str):
        assert schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)), (value, schema)
    if isinstance(value, list):
        assert len(value) <= schema.get("maxItems", len(value)), (value, schema)
        for item in value:
            validate(item, schema.get("items", {}), root)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        assert set(schema.get("required", ())) <= set(value), (value, schema)
        assert schema.get("additionalProperties", True) is not False or set(value) <= set(properties), (value, schema)
        for key, item in value.items():
            validate(item, properties.get(key, {}), root)


def check_call(family: Family, call: dict, offered: list[ToolSpec]) -> None:
    by_name = {t.name: t for t in offered}
    assert call["name"] in by_name, call
    allowed = {"name", family.arguments_key} | ({"id"} if family is MISTRAL else set())
    assert set(call) <= allowed and family.arguments_key in call, call
    parameters = by_name[call["name"]].parameters
    validate(call[family.arguments_key], parameters, parameters)


# --- forced calls --------------------------------------------------------------------------------

@pytest.mark.parametrize("choice", [ToolChoice(ToolChoiceMode.REQUIRED), ToolChoice(ToolChoiceMode.NAMED, "search")],
                         ids=["required", "named"])
@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
async def test_a_forced_call_parses_and_validates_every_time(engine: AsyncEngine, family: Family, choice: ToolChoice):
    grammar = await asyncio.to_thread(engine.tool_grammar, family, TOOLS, choice, False)
    offered = [t for t in TOOLS if choice.name in (None, t.name)]
    for text, finish in await samples(engine, grammar):
        assert finish is FinishReason.STOP, text
        (call,) = calls_in(family, text)
        check_call(family, call, offered)


async def test_hermes_models_make_several_calls_when_parallel(engine: AsyncEngine):
    grammar = await asyncio.to_thread(engine.tool_grammar, HERMES, [ADD], ToolChoice(ToolChoiceMode.REQUIRED), True)
    counts = []
    for text, finish in await samples(engine, grammar, max_tokens=120):
        if finish is FinishReason.LENGTH:  # a long run of calls: check the complete ones
            text = text[:text.rindex("</tool_call>") + len("</tool_call>")]
        calls = calls_in(HERMES, text)
        for call in calls:
            check_call(HERMES, call, [ADD])
        counts.append(len(calls))
    assert max(counts) > 1, counts  # (one call each without parallel: the forced-call test)


async def test_a_reasoning_family_closes_an_opened_thought_before_its_call(engine: AsyncEngine):
    family = with_reasoning(HERMES)
    grammar = await asyncio.to_thread(engine.tool_grammar, family, [ADD], ToolChoice(ToolChoiceMode.REQUIRED),
                                      False, starts_in_reasoning=True)
    prompt = ('<think>\nThe user wants 1 + 2. I will call add.\n</think>\n<tool_call>\n'
              '{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
              "<think>\nThe user wants 5 + 7. I will call add.")  # the model goes on inside the thought
    free, _ = await generate(engine, prompt, SamplingParams(temperature=0.0, max_tokens=120))
    assert "</think>\n<think>" in free  # left alone, it thinks on
    text, finish = await generate(engine, prompt, SamplingParams(temperature=0.0, max_tokens=120, grammar=grammar))
    assert finish is FinishReason.STOP, text
    thought, _, call = text.partition("</think>")
    assert "<think>" not in call
    (parsed,) = calls_in(HERMES, call.lstrip(" \n"))
    check_call(HERMES, parsed, [ADD])


async def test_a_tool_schema_the_converter_cannot_take_is_a_400_naming_the_tool(engine: AsyncEngine):
    odd = ToolSpec("odd_tool", "", {"type": "object", "properties": {"x": {"description": "no type"}}})
    with pytest.raises(InvalidParam) as caught:
        await asyncio.to_thread(engine.tool_grammar, HERMES, [ADD, odd], ToolChoice(ToolChoiceMode.REQUIRED), False)
    assert caught.value.param == "tools" and "odd_tool" in str(caught.value)


# --- lazy grammars (auto) ------------------------------------------------------------------------

HERMES_SHOTS = ('Example 1: <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
                'Example 2: <tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>\n'
                "Example 3:")
LLAMA3_SHOTS = ('Q: weather in Paris\nA: {"name": "get_weather", "parameters": {"city": "Paris"}}\n'
                'Q: weather in Rome\nA: {"name": "get_weather", "parameters": {"city": "Rome"}}\n'
                "Q: weather in Oslo\nA:")
GREEDY = SamplingParams(temperature=0.0, max_tokens=120)


@pytest.mark.parametrize("family, prompt, opener", [(HERMES, HERMES_SHOTS, "<tool_call>"), (LLAMA3, LLAMA3_SHOTS, "{")],
                         ids=["hermes", "llama3"])
async def test_a_lazy_grammar_waits_for_its_trigger_then_constrains(engine: AsyncEngine, family: Family,
                                                                    prompt: str, opener: str):
    grammar = await asyncio.to_thread(engine.tool_grammar, family, TOOLS, ToolChoice(ToolChoiceMode.AUTO), False)
    assert grammar.is_lazy
    free, _ = await generate(engine, prompt, GREEDY)
    lazy, finish = await generate(engine, prompt, SamplingParams(temperature=0.0, max_tokens=120, grammar=grammar))
    before = free[:free.index(opener)]
    assert lazy.startswith(before + opener)  # untouched up to the opener
    # The examples' arguments lack the required "days": left alone the model writes them the
    # same way and goes on with the next example; the grammar completes the call and ends there.
    assert "days" not in free[:free.index("}}")] and finish is FinishReason.STOP
    (call,) = calls_in(family, lazy[len(before):].strip(" "))
    check_call(family, call, TOOLS)


@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
async def test_a_lazy_grammar_that_never_triggers_changes_nothing(engine: AsyncEngine, family: Family):
    grammar = await asyncio.to_thread(engine.tool_grammar, family, TOOLS, ToolChoice(ToolChoiceMode.AUTO), False)
    prompt = "Here is a short story about a lighthouse keeper:"
    free, _ = await generate(engine, prompt, GREEDY)
    lazy, _ = await generate(engine, prompt, SamplingParams(temperature=0.0, max_tokens=120, grammar=grammar))
    assert lazy == free and len(free) > 40


# --- what a trigger replays, the grammar accepts (else llama.cpp would abort the process) ---------

@pytest.fixture(scope="module")
def vocab(model_path: Path) -> Iterator[tuple[ll.llama_vocab_p, dict[str, int]]]:
    backend = LlamaBackend(BackendConfig(model_path, 512, 1, 512, 2))
    single = {}  # one token per character, to feed a grammar character by character
    for token_id in range(backend.num_vocab):
        piece = backend.token_piece(token_id)
        if len(piece) == 1 and piece.decode("latin-1") not in single:
            single[piece.decode("latin-1")] = token_id
    yield backend._vocab, single  # noqa: SLF001
    backend.close()


def accepts_prefix(grammars: gbnf.CompiledGrammars, grammar: Grammar, text: str, single: dict[str, int]) -> bool:
    sampler = grammars.sampler(grammar)
    try:
        for char in text:
            candidates = _candidates(np.array([single[char]]), np.zeros(1))
            _apply(sampler, candidates)
            if candidates["logit"][0] == float("-inf"):
                return False
            ll.llama_sampler_accept(sampler, single[char])
        return True
    finally:
        ll.llama_sampler_free(sampler)


def replays(pattern: str, opener: str) -> set[str]:
    """Every text the trigger replays for an opener followed by up to 5 characters of JSON-ish text."""
    found = set()
    pattern = pattern.removesuffix("$") + r"\Z"  # ECMAScript's `$` is Python's `\Z`
    for length in range(6):  # (llama.cpp searches after each token: a match needs no earlier one)
        for tail in itertools.product(' \n{["x:', repeat=length):
            text = "ok " + opener + "".join(tail) if not pattern.startswith("^") else opener + "".join(tail)
            match = re.match(pattern, text) if pattern.startswith("^") else re.search(pattern, text)
            if match:
                found.add(text[match.start(1):])
    return found


@pytest.mark.parametrize("family, opener", [(HERMES, "<tool_call>"), (MISTRAL, "[TOOL_CALLS]"),
                                            (LLAMA3, '{"name"'), (LLAMA3, '{ "name"'),
                                            (GENERIC, '{"tool_calls"')], ids=lambda x: getattr(x, "name", x))
def test_every_replayed_trigger_text_is_a_start_the_grammar_accepts(vocab, family: Family, opener: str):
    handle, single = vocab
    grammars = gbnf.CompiledGrammars(handle)
    lazy = gbnf.tool_grammar(family, TOOLS, ToolChoice(ToolChoiceMode.AUTO), True)
    forced = Grammar(lazy.text)  # the same grammar awake from the first character
    texts = replays(lazy.triggers[0], opener)
    assert len(texts) >= 4, texts
    for text in texts:
        assert accepts_prefix(grammars, forced, text, single), text
    assert not accepts_prefix(grammars, forced, opener + "x", single)  # the check can fail
    grammars.close()


TWO_CALLS = {
    "hermes": ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
               '\n<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 4}}\n</tool_call>'),
    "mistral": ('[TOOL_CALLS][{"name": "add", "arguments": {"a": 1, "b": 2}}', ', {"name": "add"'),
    "generic": ('{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}', ', {"name": "add"'),
    "llama3": ('{"name": "add", "parameters": {"a": 1, "b": 2}}', '; {"name": "add"'),
}


@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
def test_a_second_call_only_when_parallel(vocab, family: Family):
    handle, single = vocab
    grammars = gbnf.CompiledGrammars(handle)
    first, second = TWO_CALLS[family.name]
    required = ToolChoice(ToolChoiceMode.REQUIRED)
    one, several = (gbnf.tool_grammar(family, [ADD], required, parallel) for parallel in (False, True))
    assert accepts_prefix(grammars, one, first, single)
    assert not accepts_prefix(grammars, one, first + second, single)
    # Llama 3.1's JSON calls come one per reply, parallel or not (localllm/tool_grammar.py).
    assert accepts_prefix(grammars, several, first + second, single) is (family is not LLAMA3)
    grammars.close()


def test_strings_in_calls_are_strict_json(vocab):
    handle, single = vocab
    grammars = gbnf.CompiledGrammars(handle)
    grammar = gbnf.tool_grammar(HERMES, [SEARCH], ToolChoice(ToolChoiceMode.REQUIRED), False)
    start = '<tool_call>\n{"name": "search", "arguments": {"query": "a'
    assert accepts_prefix(grammars, grammar, start + '\\n\\t"', single)
    assert not accepts_prefix(grammars, grammar, start + "\n", single)  # json.loads refuses raw control characters
    assert not accepts_prefix(grammars, grammar, start + "\t", single)
    grammars.close()


def test_response_format_strings_are_strict_json_and_refs_keep_their_own_rules(vocab):
    handle, single = vocab
    grammars = gbnf.CompiledGrammars(handle)
    # The stock converter named the $ref's rule "Item", the same rule as the property Item.
    grammar = gbnf.json_grammar({"type": "object", "properties": {"Item": {"type": "boolean"},
                                                                 "s": {"$ref": "#/$defs/Item"}},
                                 "required": ["Item", "s"], "$defs": {"Item": {"type": "string"}}})
    assert accepts_prefix(grammars, grammar, '{"Item": true, "s": "a\\n', single)
    assert not accepts_prefix(grammars, grammar, '{"Item": true, "s": "a\n', single)
    assert not accepts_prefix(grammars, grammar, '{"Item": true, "s": t', single)
    grammars.close()


NEXT_CALL = {"hermes": TWO_CALLS["hermes"][1], "mistral": ', {"name": "add", "arguments": {"a": 3, "b": 4}}',
             "generic": ', {"name": "add", "arguments": {"a": 3, "b": 4}}'}


@pytest.mark.parametrize("family", [HERMES, MISTRAL, GENERIC], ids=lambda f: f.name)
def test_parallel_calls_stop_at_the_cap(vocab, family: Family):
    """A weak model that keeps calling must close its list: past MAX_PARALLEL_CALLS no call opens."""
    handle, single = vocab
    grammars = gbnf.CompiledGrammars(handle)
    several = gbnf.tool_grammar(family, [ADD], ToolChoice(ToolChoiceMode.REQUIRED), True)
    first, second = TWO_CALLS[family.name]
    full = first + NEXT_CALL[family.name] * (MAX_PARALLEL_CALLS - 1)
    assert accepts_prefix(grammars, several, full, single)
    assert not accepts_prefix(grammars, several, full + second, single)
    grammars.close()
