"""The JSON-schema bounds walker and the GBNF bounds (localllm/constraints.py), without a model."""
from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest

from localllm import constraints as c
from localllm.constraints import Grammar, check_gbnf, check_schema
from localllm.server import response_cache
from localllm.server.schemas import GenerationRequest
from localllm.types import InvalidParam, SamplingParams


def refused(schema: object) -> str:
    with pytest.raises(InvalidParam) as caught:
        check_schema(schema)
    assert caught.value.param == "response_format"
    return str(caught.value)


@pytest.mark.parametrize("key", ["minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"])
@pytest.mark.parametrize("value", [100_000_000, 10**7, c.MAX_REPETITIONS + 1, -1, True, 1.5, "10"])
def test_counts_past_the_bound_or_not_integers_are_refused(key: str, value: object):
    assert key in refused({"type": "array", "items": {"type": "string"}, key: value})


def test_counts_within_the_bounds_are_accepted():
    check_schema({"type": "string", "minLength": c.MAX_REPETITIONS})
    check_schema({"type": "string", "maxLength": c.MAX_OPTIONAL_REPETITIONS})
    check_schema({"type": "string", "minLength": 9_000, "maxLength": 9_000 + c.MAX_OPTIONAL_REPETITIONS})
    check_schema({"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 3})
    assert "1001" in refused({"type": "string", "maxLength": c.MAX_OPTIONAL_REPETITIONS + 1})
    assert "larger" in refused({"type": "string", "minLength": 3, "maxLength": 2})


@pytest.mark.parametrize("schema", [
    {"type": "foo"},
    {"type": 3},
    {"type": []},
    {"type": ["string", "foo"]},
    {"properties": {"a": {"type": "foo"}}},
    {"items": {"type": "foo"}},
    {"items": [{"type": "string"}, {"type": "foo"}]},
    {"anyOf": [{"type": "string"}, {"type": "foo"}]},
    {"allOf": [{"properties": {"a": {"type": "foo"}}}]},
    {"additionalProperties": {"type": "foo"}},
    {"$defs": {"unused": {"type": "foo"}}},
    {"properties": {"a": {"properties": {"b": {"properties": {"c": {"type": "nope"}}}}}}},
])
def test_a_bogus_type_anywhere_is_refused(schema: dict):
    assert "type" in refused(schema)


@pytest.mark.parametrize("schema, words", [
    ({"$ref": "#/$defs/missing"}, "points at nothing"),
    ({"$defs": {"a": {"type": "string"}}, "$ref": "#/$defs/b"}, "points at nothing"),
    ({"$ref": "https://example.com/s.json"}, "local"),
    ({"$ref": "other.json#/a"}, "local"),
    ({"$ref": 3}, "local"),
    ({"properties": {"a": {"type": "string"}}, "$ref": "#/properties/a/type"}, "subschema"),
    ({"$defs": {"a": {"allOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"}, "refers back"),
])
def test_refs_must_resolve_to_a_subschema_inside_the_document(schema: dict, words: str):
    assert words in refused(schema)


def test_refs_that_resolve_are_accepted():
    check_schema({"$defs": {"name": {"type": "string", "maxLength": 10}},
                  "type": "object", "properties": {"a": {"$ref": "#/$defs/name"}, "b": {"$ref": "#/$defs/name"}}})
    check_schema({"definitions": {"node": {"type": "object", "properties": {"next": {"$ref": "#/definitions/node"}}}},
                  "$ref": "#/definitions/node"})  # recursion through a plain $ref is one shared rule


@pytest.mark.parametrize("pattern, words", [
    ("^(ab$", "valid regular expression"),
    ("^[z-a]$", "valid regular expression"),
    ("abc", "anchored"),
    ("^(?=a)a$", "not supported"),
    ("^\\d+$", "\\d"),
    ("^a\\.b$", "\\."),
    ("^(a)\\1$", "\\1"),
    ("^a{0,100000000}$", "10000"),
    ("^a{5,2000}$", "optional"),
    ("^(a?){0,1000}$", "match nothing"),
    ("^(a*b*)+$", "match nothing"),
    ("^" + "a" * c.MAX_PATTERN_CHARS + "$", "at most"),
])
def test_patterns_are_checked(pattern: str, words: str):
    assert words in refused({"type": "string", "pattern": pattern})


def test_reasonable_patterns_are_accepted():
    for pattern in ("^[a-z]+(-[a-z]+)*$", "^[0-9]{3}-[0-9]{4}$", "^(ab|cd){0,1000}$", "^\\(x\\)$"):
        check_schema({"type": "string", "pattern": pattern})


def test_sizes_counts_and_depth_are_bounded():
    assert "properties" in refused({"type": "object", "properties": {f"p{i}": {} for i in range(c.MAX_PROPERTIES + 1)}})
    assert "enum" in refused({"enum": list(range(c.MAX_ENUM_VALUES + 1))})
    assert "enum" in refused({"enum": []})
    assert "bytes" in refused({"const": "x" * c.MAX_SCHEMA_BYTES})
    deep: dict = {"type": "string"}
    for _ in range(c.MAX_SCHEMA_DEPTH + 1):
        deep = {"type": "object", "properties": {"a": deep}}
    assert "deeper" in refused(deep)
    nested_const: object = 1
    for _ in range(100_000):  # deeper than Python's recursion limit: walked without recursion
        nested_const = [nested_const]
    assert "deeper" in refused({"const": nested_const})
    many = json.loads(json.dumps({"anyOf": [{"anyOf": [{"type": "string"}] * 40}] * 40}))  # distinct objects
    assert "subschemas" in refused(many)


def test_the_grammar_size_is_estimated_before_any_grammar_exists():
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 1000} for i in range(200)}}
    assert "grammar would be about" in refused(wide)
    long_name = "n" * 5_000  # rule names grow with the path and are repeated per item
    assert "grammar would be about" in refused(
        {"type": "object", "properties": {long_name: {"type": "array", "items": {}, "maxItems": 1000}}})
    doubling = {"$defs": {"d0": {"properties": {"s": {"type": "string", "maxLength": 1000}}}}, "$ref": "#/$defs/d12"}
    for k in range(1, 13):  # allOf copies the referenced properties in place: 2**12 copies
        doubling["$defs"][f"d{k}"] = {"properties": {"x": {"allOf": [{"$ref": f"#/$defs/d{k - 1}"}] * 2}}}
    assert "grammar would be about" in refused(doubling)
    assert 0 < check_schema({"type": "object", "properties": {"a": {"type": "string"}}}) < 1000


def test_every_subschema_must_be_an_object():
    for schema in ([], "string", {"items": True}, {"properties": {"a": 3}}, {"anyOf": []}, {"anyOf": {}},
                   {"properties": []}, {"required": "a"}, {"$defs": []}):
        refused(schema)


def test_the_schema_is_not_changed():
    schema = {"$defs": {"a": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/a"}}}
    before = json.dumps(schema)
    check_schema(schema)
    assert json.dumps(schema) == before


def test_grammar_text_is_bounded_and_digested():
    text = 'root ::= "a" ("b" | [()])*  # (((('
    grammar = Grammar(text)
    assert grammar.digest == hashlib.sha256(text.encode()).hexdigest()
    with pytest.raises(InvalidParam, match="larger"):
        Grammar('root ::= "' + "a" * c.MAX_GRAMMAR_BYTES + '"')
    nested = "root ::= " + "(" * (c.MAX_GRAMMAR_NESTING + 1) + '"a"' + ")" * (c.MAX_GRAMMAR_NESTING + 1)
    with pytest.raises(InvalidParam, match="nests"):
        check_gbnf(nested)
    check_gbnf("root ::= " + "(" * c.MAX_GRAMMAR_NESTING + '"a"' + ")" * c.MAX_GRAMMAR_NESTING)
    check_gbnf('root ::= "((((((" [(((] "\\"(((("')  # parentheses in literals and classes do not nest
    with pytest.raises(InvalidParam):
        Grammar('root ::= "a"\0')


def test_the_response_cache_keys_by_the_grammar_digest(monkeypatch: pytest.MonkeyPatch):
    seen: list[dict] = []
    monkeypatch.setattr(response_cache, "request_key", lambda *args: seen.append(args[4]) or str(len(seen)))
    model = SimpleNamespace(identity="m", chat_template=None)
    big = Grammar('root ::= "' + "x" * 500_000 + '"')
    gen = GenerationRequest(model="m", prompts=["hi"], params=SamplingParams(grammar=big), n=1, stream=False,
                            include_usage=False)
    response_cache.key_for(model, "chat.completion", gen, False)
    assert seen[0]["grammar"] == big.digest
    assert len(json.dumps(seen[0])) < 2_000
