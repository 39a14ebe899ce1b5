"""Output constraints (response_format): JSON schemas bounded before any grammar exists.

A JSON schema turns into a GBNF grammar that llama.cpp parses with a recursive
descent parser and then runs on every sampled token. Repetition counts are
written out literally (`maxLength: 1e8` became gigabytes of grammar and a stack
overflow inside llama.cpp), so every schema is walked here first, with the
standard library only, and refused with an `InvalidParam("response_format")`
(a 400) past these limits:

- `MAX_SCHEMA_BYTES` (64 KiB): the schema as compact JSON.
- `MAX_SCHEMA_DEPTH` (32): the chain of subschemas (and allOf `$ref` hops)
  below the root; `MAX_DOCUMENT_DEPTH` (72): JSON nesting of the whole document
  (a property's subschema sits two levels below its object).
- `MAX_SUBSCHEMAS` (1,000): subschemas in the whole document.
- `MAX_PROPERTIES` (256): properties of one object, and any
  `minProperties`/`maxProperties`.
- `MAX_ENUM_VALUES` (1,000): values of one `enum`.
- `MAX_REPETITIONS` (10,000): any `minLength`, `maxLength`, `minItems`,
  `maxItems` and any `{m,n}` count in a `pattern`.
- `MAX_OPTIONAL_REPETITIONS` (1,000): `max - min` of those (a bare max counts
  whole). Each optional repetition nests one group deeper; llama.cpp refuses
  more than 1,000 (its parser's MAX_REPETITION_THRESHOLD counts two rules per level).
- `MAX_PATTERN_CHARS` (1,000): one `pattern`; it must compile as a Python
  regex, be anchored `^...$`, and use only what the GBNF converter translates.
- `MAX_GRAMMAR_BYTES` (1 MiB): the grammar, estimated from the schema before it
  is built and measured after.
- `MAX_GRAMMAR_NESTING` (2,000): parenthesis depth of the grammar text (the
  parser recurses once per group; 20,000 overflowed an 8 MiB thread stack).

`$ref` must point inside the document (`#/...`) at a subschema walked here;
dangling or remote references are refused. A `Grammar` can only be made from
text that passed `check_gbnf`, so nothing unbounded reaches llama.cpp.

A lazy `Grammar` (tool calls under tool_choice "auto") also carries trigger regexes,
which llama.cpp compiles with std::regex (ECMAScript) and runs over the generated
text after every token until one matches. They are ours, not the client's, but are
bounded all the same (`check_triggers`): at most `MAX_TRIGGERS` of at most
`MAX_TRIGGER_CHARS` each, in the subset of regex syntax that Python and ECMAScript
read alike (an invalid std::regex aborts the process), with no unbounded repetition
(libstdc++'s matcher recurses once per repeated character).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from localllm.types import InvalidParam

try:
    import re._parser as _sre  # Python 3.11+
except ImportError:  # pragma: no cover - older Pythons
    import sre_parse as _sre  # type: ignore[no-redef]

MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32
MAX_DOCUMENT_DEPTH = 72
MAX_SUBSCHEMAS = 1_000
MAX_PROPERTIES = 256
MAX_ENUM_VALUES = 1_000
MAX_REPETITIONS = 10_000
MAX_OPTIONAL_REPETITIONS = 1_000
MAX_PATTERN_CHARS = 1_000
MAX_GRAMMAR_BYTES = 1024 * 1024
MAX_GRAMMAR_NESTING = 2_000
MAX_TRIGGERS = 8
MAX_TRIGGER_CHARS = 512
MAX_TRIGGER_REPEAT = 64

PARAM = "response_format"
TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})
_COUNTS = (("minLength", "maxLength"), ("minItems", "maxItems"), ("minProperties", "maxProperties"))
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(,?)\s*(\d*)\s*\}")
_PATTERN_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_PATTERN_ESCAPES_OK = frozenset('\\"[]-tnrxuU(){}|*+?')
"""Escapes the GBNF converter turns into something llama.cpp parses (not \\d, \\w, \\., \\b, \\1...)."""
_TRIGGER_ESCAPES_OK = frozenset("\\^$.|?*+()[]{}/-sSdDwWntrfv")
"""Escapes that mean the same to Python's re and to ECMAScript (std::regex)."""
_TRIGGER_BOUND = re.compile(r"\{(\d{1,2})(?:,(\d{1,2}))?\}")
_GBNF_SKIPPED = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|#[^\n]*')
"""Literals, character classes and comments: parentheses inside them do not nest."""


def schema_error(message: str) -> InvalidParam:
    return InvalidParam(PARAM, f"response_format: {message}")


@dataclass(frozen=True, slots=True)
class Grammar:
    """GBNF text that passed `check_gbnf`, with its sha256 (the response cache keys by it).

    `triggers` empty: the grammar constrains from the first token. Otherwise it is lazy
    (llama_sampler_init_grammar_lazy_patterns): unconstrained until the text generated so
    far matches one of these regexes; then the text from the match's first non-empty
    group (or the whole match) to the end is fed to the grammar, which constrains from
    there on. Triggers are part of the digest."""

    text: str
    triggers: tuple[str, ...] = ()
    digest: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        check_gbnf(self.text)
        object.__setattr__(self, "triggers", tuple(self.triggers) if isinstance(self.triggers, list) else self.triggers)
        check_triggers(self.triggers)
        if self.triggers:  # GBNF text holds no NUL, so a lazy preimage never equals a plain one
            preimage = "\0".join(("lazy", self.text, *self.triggers))
        else:  # unchanged for plain grammars: response-cache keys stay valid
            preimage = self.text
        object.__setattr__(self, "digest", hashlib.sha256(preimage.encode()).hexdigest())

    @property
    def is_lazy(self) -> bool:
        return bool(self.triggers)


def check_triggers(triggers: object) -> None:
    """Raises InvalidParam unless `triggers` is a tuple of bounded, portable, non-empty regexes."""
    if not isinstance(triggers, tuple) or len(triggers) > MAX_TRIGGERS:
        raise schema_error(f"grammar triggers must be a tuple of at most {MAX_TRIGGERS} patterns")
    for pattern in triggers:
        if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_TRIGGER_CHARS or "\0" in pattern:
            raise schema_error(f"a grammar trigger must be a pattern of 1 to {MAX_TRIGGER_CHARS} characters")
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            raise schema_error(f"grammar trigger {pattern!r} is not a regular expression: {exc}") from None
        _check_trigger_syntax(pattern)


def _check_trigger_syntax(pattern: str) -> None:
    """Only escapes, groups and counted repeats that std::regex reads as Python does; no `*`,
    `+` or open-ended `{m,}` outside a character class."""
    i, in_class = 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            if pattern[i + 1:i + 2] not in _TRIGGER_ESCAPES_OK:
                raise schema_error(f"grammar trigger {pattern!r}: unsupported escape")
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char in "*+":
            raise schema_error(f"grammar trigger {pattern!r}: unbounded repetition")
        elif char == "(" and pattern.startswith("(?", i) and not pattern.startswith("(?:", i):
            raise schema_error(f"grammar trigger {pattern!r}: only (?:...) groups are supported")
        elif char == "{":
            bound = _TRIGGER_BOUND.match(pattern, i)
            if bound is None or int(bound.group(2) or bound.group(1)) > MAX_TRIGGER_REPEAT:
                raise schema_error(f"grammar trigger {pattern!r}: repeats must be {{m}} or {{m,n}} "
                                   f"with n <= {MAX_TRIGGER_REPEAT}")
            i = bound.end()
            continue
        i += 1


def check_gbnf(text: str) -> None:
    """Raises InvalidParam unless `text` is within the grammar size and nesting bounds."""
    if not isinstance(text, str) or "\0" in text:
        raise schema_error("the grammar is not text")
    if len(text) > MAX_GRAMMAR_BYTES or len(text.encode()) > MAX_GRAMMAR_BYTES:
        raise schema_error(f"the schema's grammar is larger than {MAX_GRAMMAR_BYTES} bytes")
    depth = deepest = 0
    for paren in re.sub(r"[^()]", "", _GBNF_SKIPPED.sub("", text)):
        depth += 1 if paren == "(" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_GRAMMAR_NESTING:
        raise schema_error(f"the schema's grammar nests {deepest} groups deep; the limit is {MAX_GRAMMAR_NESTING}")


def check_schema(schema: object) -> int:
    """Raises InvalidParam unless `schema` is within every bound above; returns the grammar
    size estimated from it (bytes). Does not change `schema`."""
    if not isinstance(schema, dict):
        raise schema_error("json_schema.schema must be a JSON object")
    _check_document(schema)
    return _Walk(schema).run()


def _check_document(schema: dict) -> None:
    """Depth first, without recursion, so json.dumps below cannot hit the recursion limit."""
    pending: list[tuple[Any, int]] = [(schema, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_DOCUMENT_DEPTH:
            raise schema_error(f"the schema document nests deeper than {MAX_DOCUMENT_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    try:
        size = len(json.dumps(schema, separators=(",", ":")).encode())
    except (TypeError, ValueError) as exc:  # NaN is not JSON; lone surrogates do not encode
        raise schema_error(f"the schema is not plain JSON ({exc})") from None
    if size > MAX_SCHEMA_BYTES:
        raise schema_error(f"the schema is {size} bytes; the limit is {MAX_SCHEMA_BYTES}")


class _Walk:
    """One pass over the subschemas the GBNF converter would visit.

    The cost is the grammar text the converter writes: repeated items cost their count
    times the length of the repeated rule's name (names grow with the property path).
    Plain `$ref`s become one shared rule (counted once); an allOf `$ref` copies the
    target's properties in place (counted at every use)."""

    def __init__(self, root: dict) -> None:
        self.root = root
        self.num_subschemas = 0
        self.costs: dict[int, int] = {}
        """id(subschema) -> estimated grammar bytes of its subtree (also: walked already)."""
        self.in_progress: set[int] = set()
        self.shared_refs: list[str] = []

    def run(self) -> int:
        total = self.visit(self.root, 1, 4)
        done: set[int] = set()
        while self.shared_refs:  # each referenced subschema becomes one rule, written once
            target = self.resolve(self.shared_refs.pop())
            if id(target) not in done:
                done.add(id(target))
                total += self.visit(target, 1, 16)
        for key in ("$defs", "definitions"):  # validated even when nothing refers to them
            for sub in (self.root.get(key) or {}).values():
                self.visit(sub, 2, 16)
        if total > MAX_GRAMMAR_BYTES:
            raise schema_error(f"the schema's grammar would be about {total} bytes; the limit is {MAX_GRAMMAR_BYTES}")
        return total

    def visit(self, schema: object, depth: int, name_len: int) -> int:
        if not isinstance(schema, dict):
            raise schema_error("every subschema must be a JSON object")
        if id(schema) in self.costs:
            return self.costs[id(schema)]
        if id(schema) in self.in_progress:
            raise schema_error("an allOf $ref refers back to itself")
        if depth > MAX_SCHEMA_DEPTH:
            raise schema_error(f"subschemas nest deeper than {MAX_SCHEMA_DEPTH} levels")
        self.num_subschemas += 1
        if self.num_subschemas > MAX_SUBSCHEMAS:
            raise schema_error(f"the schema has more than {MAX_SUBSCHEMAS} subschemas")
        self.in_progress.add(id(schema))
        cost = self.check_keywords(schema, name_len) + self.children(schema, depth, name_len)
        self.in_progress.discard(id(schema))
        self.costs[id(schema)] = cost
        return cost

    def check_keywords(self, schema: dict, name_len: int) -> int:
        _check_type(schema.get("type"))
        cost = 0
        for low_key, high_key in _COUNTS:
            repeated = _check_counts(schema, low_key, high_key)
            # The repeated item: a string's `char` rule, an array's item rule with its separator.
            cost += repeated * (8 if low_key == "minLength" else name_len + 16 if low_key == "minItems" else 0)
        if "enum" in schema:
            enum = schema["enum"]
            if not isinstance(enum, list) or not enum or len(enum) > MAX_ENUM_VALUES:
                raise schema_error(f"enum must be a list of 1 to {MAX_ENUM_VALUES} values")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise schema_error("required must be a list of property names")
        if "pattern" in schema:
            cost += _check_pattern(schema["pattern"], name_len)
        if "$ref" in schema:
            self.shared_refs.append(_ref(schema["$ref"]))
        return cost

    def children(self, schema: dict, depth: int, name_len: int) -> int:
        cost = 0
        properties = schema.get("properties", {})
        if not isinstance(properties, dict) or len(properties) > MAX_PROPERTIES:
            raise schema_error(f"properties must be an object of at most {MAX_PROPERTIES} subschemas")
        for name, sub in properties.items():
            child_len = name_len + len(name) + 1
            cost += 4 * (child_len + 16) + self.visit(sub, depth + 1, child_len)
        extra = schema.get("additionalProperties")
        if extra is not None and not isinstance(extra, bool):
            cost += self.visit(extra, depth + 1, name_len + 17)
        items = schema.get("items")
        if isinstance(items, list):
            cost += sum(self.visit(sub, depth + 1, name_len + 12) for sub in items)
        elif items is not None:
            cost += self.visit(items, depth + 1, name_len + 5)
        for key in _SCHEMA_LISTS:
            subs = schema.get(key)
            if subs is None:
                continue
            if not isinstance(subs, list) or not subs:
                raise schema_error(f"{key} must be a non-empty list of subschemas")
            cost += sum(self.visit(sub, depth + 1, name_len + 12) for sub in subs)
            if key == "allOf":
                cost += self.all_of_refs(subs, depth, name_len)
        for key in ("$defs", "definitions"):
            defs = schema.get(key)
            if defs is not None and not isinstance(defs, dict):
                raise schema_error(f"{key} must be an object of subschemas")
        return cost

    def all_of_refs(self, subs: list, depth: int, name_len: int) -> int:
        """allOf copies the properties of each `$ref`ed component (also inside an anyOf) in place."""
        cost = 0
        for sub in subs:
            for component in sub["anyOf"] if isinstance(sub.get("anyOf"), list) else [sub]:
                if isinstance(component, dict) and "$ref" in component:
                    cost += self.visit(self.resolve(_ref(component["$ref"])), depth + 1, name_len)
        return cost

    def resolve(self, ref: str) -> dict:
        """The subschema a local `$ref` names, found as the converter finds it."""
        target: Any = self.root
        for part in ref.split("#")[-1].split("/")[1:]:
            if not isinstance(target, dict) or part not in target:
                raise schema_error(f"$ref {ref!r} points at nothing in the schema")
            target = target[part]
        if not isinstance(target, dict):
            raise schema_error(f"$ref {ref!r} does not point at a subschema")
        return target


def _ref(ref: object) -> str:
    if not isinstance(ref, str) or not ref.startswith("#/"):
        raise schema_error("$ref must be a local reference such as '#/$defs/name'")
    return ref


def _check_type(kind: object) -> None:
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    if isinstance(kind, list) and not kind:
        raise schema_error("type must not be an empty list")
    for one in kinds:
        if not isinstance(one, str) or one not in TYPES:
            raise schema_error(f"type {one!r} is not one of {', '.join(sorted(TYPES))}")


def _check_counts(schema: dict, low_key: str, high_key: str) -> int:
    """Checks a min/max pair; returns how many items the grammar writes out."""
    low, high = _count(schema, low_key), _count(schema, high_key)
    if low is None and high is None:
        return 0
    optional = 0 if high is None else high - (low or 0)  # no maximum: `item*`, nothing nested
    if optional < 0:
        raise schema_error(f"{low_key} is larger than {high_key}")
    if optional > MAX_OPTIONAL_REPETITIONS:
        raise schema_error(f"{high_key} - {low_key} is {optional}; the limit is {MAX_OPTIONAL_REPETITIONS}")
    if low_key == "minProperties" and max(low or 0, high or 0) > MAX_PROPERTIES:
        raise schema_error(f"{low_key} and {high_key} may be at most {MAX_PROPERTIES}")
    return max(low or 0, high or 0)


def _count(schema: dict, key: str) -> int | None:
    value = schema.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPETITIONS:
        raise schema_error(f"{key} must be an integer between 0 and {MAX_REPETITIONS}")
    return value


def _check_pattern(pattern: object, name_len: int) -> int:
    """Checks a regex `pattern`; returns the grammar bytes its repetitions cost."""
    if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_CHARS:
        raise schema_error(f"pattern must be a string of at most {MAX_PATTERN_CHARS} characters")
    try:
        _check_repeats(_sre.parse(pattern))
    except (re.error, RecursionError, OverflowError) as exc:
        raise schema_error(f"pattern is not a valid regular expression: {exc}") from None
    if not (pattern.startswith("^") and pattern.endswith("$")):
        raise schema_error("pattern must be anchored: '^...$'")
    if "(?" in pattern:
        raise schema_error("pattern: lookarounds and (?...) groups are not supported")
    for escape in _PATTERN_ESCAPE.findall(pattern):
        if escape not in _PATTERN_ESCAPES_OK:
            raise schema_error(f"pattern: the escape \\{escape} is not supported; write a character class")
    cost = 0
    for low_text, comma, high_text in _QUANTIFIER.findall(pattern):
        low = int(low_text) if low_text else 0
        high = low if not comma else int(high_text) if high_text else None
        cost += _pattern_count(low, high) * (name_len + 8)
    return cost


def _check_repeats(parsed: object) -> bool:
    """Raises InvalidParam for a repeated part that can match nothing (`(a?){0,1000}`): its
    grammar is so ambiguous that llama.cpp spent minutes on one token. Returns whether
    `parsed` (a parsed regex sequence) can match the empty string."""
    nullable = True
    for op, arg in parsed:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, _, item = arg
            if _check_repeats(item):
                raise schema_error("pattern repeats a part that can match nothing, e.g. (a?)*; "
                                   "make the repeated part non-empty")
            nullable = nullable and low == 0
        elif name == "BRANCH":
            nullable = nullable and any([_check_repeats(branch) for branch in arg[1]])
        elif name in ("SUBPATTERN", "ATOMIC_GROUP"):
            nullable = _check_repeats(arg[-1]) and nullable
        elif name != "AT":  # anchors match nothing; every other item matches one character
            nullable = False
    return nullable


def _pattern_count(low: int, high: int | None) -> int:
    if low > MAX_REPETITIONS or (high is not None and high > MAX_REPETITIONS):
        raise schema_error(f"pattern repetition counts may be at most {MAX_REPETITIONS}")
    if high is not None and high - low > MAX_OPTIONAL_REPETITIONS:
        raise schema_error(f"pattern repetitions {{{low},{high}}}: at most {MAX_OPTIONAL_REPETITIONS} optional ones")
    return max(low, high or 0)
