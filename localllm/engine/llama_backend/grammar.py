"""response_format -> a bounded GBNF `Grammar`, and llama.cpp grammars compiled once per digest.

`json_grammar` runs in a worker thread (never the event loop): the schema passes
`localllm.constraints.check_schema` before llama_cpp's converter writes any text,
and the text passes `check_gbnf` (inside `Grammar`) before llama.cpp parses it.
`tool_grammar` does the same for the tool-call grammars that localllm.tool_grammar
plans: one converter run over one JSON document per request's call shape.
`CompiledGrammars` parses each distinct grammar once and keeps it; every request
gets a clone (`llama_sampler_clone` copies the parsed rules, no second parse). A lazy
grammar (`Grammar.triggers`) is parsed by llama_sampler_init_grammar_lazy_patterns;
its clones start asleep, awaiting their trigger.
"""
from __future__ import annotations

import ctypes
import json
import logging
import threading
from collections import OrderedDict

import llama_cpp.llama_cpp as ll
from llama_cpp.llama_grammar import JSON_GBNF, BuiltinRule, SchemaConverter, json_schema_to_gbnf

from localllm.chat.families import Family
from localllm.chat.types import ToolChoice, ToolSpec
from localllm.constraints import Grammar, check_schema, schema_error
from localllm.tool_grammar import (CALL_RULE, REF_RULE_PREFIX, RESPONSE_RULE, check_parameters,
                                   plan_tool_grammar, tools_error)
from localllm.types import InvalidParam

log = logging.getLogger(__name__)

JSON_OBJECT = Grammar(JSON_GBNF)
"""response_format {"type": "json_object"}: any JSON value llama_cpp's JSON grammar allows."""
STRICT_CHAR = BuiltinRule(r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])', [])
"""A JSON string's character: the converter's own rule lets raw control characters (a newline)
into strings, which json.loads and every SDK refuse; llama.cpp's C++ converter excludes them."""
MAX_COMPILED = 32
MAX_COMPILED_BYTES = 4 * 1024 * 1024
"""Compiled grammars kept for reuse: at most this many, of at most this much grammar text."""


def json_grammar(schema: dict | None) -> Grammar:
    """GBNF for any JSON object (schema None) or for a JSON schema (with the tool grammars'
    converter: strict strings, one rule per `$ref`). Raises InvalidParam (param
    response_format) for a schema past the bounds or one the converter cannot take."""
    if schema is None:
        return JSON_OBJECT
    check_schema(schema)
    try:
        converter = _Converter()
        rule = converter.visit(converter.resolve_refs(json.loads(json.dumps(schema)), ""), RESPONSE_RULE)
        text = f"root ::= {rule}\n" + converter.format_grammar()
    except Exception as exc:  # the converter asserts, raises KeyError, ValueError...: all mean "unsupported"
        log.debug("json_schema_to_gbnf refused a schema: %r", exc)
        raise schema_error(f"unsupported JSON schema: {type(exc).__name__}: {exc}"[:500]) from None
    return Grammar(text)


def tool_grammar(family: Family, tools: list[ToolSpec], choice: ToolChoice, parallel: bool,
                 response_schema: dict | None = None, *, starts_in_reasoning: bool = False) -> Grammar | None:
    """The grammar that makes the family's tool calls valid by construction (forced for
    tool_choice required/named, lazy for auto), or None (see localllm.tool_grammar).
    Raises InvalidParam ("tools", "tool_choice" or "response_format")."""
    plan = plan_tool_grammar(family, tools, choice, parallel, response_schema,
                             starts_in_reasoning=starts_in_reasoning)
    if plan is None:
        return None
    try:
        converter = _Converter()
        document = converter.resolve_refs(plan.document, "")
        call_rule = converter.visit(document["call"], CALL_RULE)
        response_rule = converter.visit(document["response"], RESPONSE_RULE) if "response" in document else None
        rules = converter.format_grammar()
    except Exception as exc:  # the converter asserts, raises KeyError, ValueError...: "unsupported"
        log.debug("json_schema_to_gbnf refused a tool schema: %r", exc)
        raise _unsupported(tools, response_schema, exc) from None
    try:
        return Grammar(rules + "\n" + plan.root_rules(call_rule, response_rule), plan.triggers)
    except InvalidParam as exc:  # past the grammar bounds: the tools' fault
        raise tools_error(str(exc).removeprefix("response_format: ")) from None


class _Converter(SchemaConverter):
    """llama_cpp's converter with strict JSON strings (`STRICT_CHAR`), naming each `$ref`
    target's rule after the whole reference: the stock one names it by the last path part, so
    `#/$defs/tool-0/$defs/Item` and `#/$defs/tool-1/$defs/Item` (or a property named Item)
    would share one rule."""

    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        self._ref_names: dict[str, str] = {}

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        return super()._add_primitive(name, STRICT_CHAR if name == "char" else rule)

    def _resolve_ref(self, ref: str) -> str:
        name = self._ref_names.setdefault(ref, f"{REF_RULE_PREFIX}{len(self._ref_names)}")
        if name not in self._rules and ref not in self._refs_being_resolved:
            self._refs_being_resolved.add(ref)
            target = self.visit(self._refs[ref], name)  # a primitive keeps its own name ("string")
            self._refs_being_resolved.remove(ref)
            if target != name:
                self._rules[name] = target
        return name


def _unsupported(tools: list[ToolSpec], response_schema: dict | None, exc: Exception):
    """The error for a document the converter refused, naming the first tool it refuses alone."""
    for tool in tools:
        try:
            check_parameters(tool)
            json_schema_to_gbnf(json.dumps(tool.parameters))
        except Exception as refusal:  # noqa: BLE001 - any refusal names this tool
            return tools_error(f"function {tool.name!r}: unsupported JSON schema: "
                               f"{type(refusal).__name__}: {refusal}"[:500])
    if response_schema is not None:
        return schema_error(f"unsupported JSON schema: {type(exc).__name__}: {exc}"[:500])
    return tools_error(f"unsupported JSON schema: {type(exc).__name__}: {exc}"[:500])


class CompiledGrammars:
    """llama.cpp grammar samplers by digest, each parsed once; thread-safe.

    The kept samplers are never used to sample: they stay in their start state and are
    only cloned. Parsing runs outside the lock (a 1 MiB grammar takes ~0.2 s), so the
    engine thread's clones never wait for a worker's parse. `close()` waits for parses
    in flight, frees what is kept, and must run before the model is freed."""

    def __init__(self, vocab: ll.llama_vocab_p) -> None:
        self._vocab = vocab
        self._lock = threading.Condition()
        self._compiled: OrderedDict[str, tuple[ll.llama_sampler_p, int]] = OrderedDict()
        self._num_parsing = 0
        self._closed = False

    def compile(self, grammar: Grammar) -> None:
        """Parses `grammar` unless kept already; raises InvalidParam if llama.cpp refuses it.
        Any thread (a worker, so the engine thread only clones)."""
        if not isinstance(grammar, Grammar):  # only checked text reaches llama.cpp's parser
            raise TypeError("expected a localllm.constraints.Grammar")
        with self._lock:
            self._check_open()
            if grammar.digest in self._compiled:
                self._compiled.move_to_end(grammar.digest)
                return
            self._num_parsing += 1
        try:
            sampler = self._parse(grammar)
        finally:
            with self._lock:
                self._num_parsing -= 1
                self._lock.notify_all()
        if not sampler:
            raise schema_error("the output grammar could not be parsed")
        self._keep(grammar, sampler)

    def _parse(self, grammar: Grammar) -> ll.llama_sampler_p:
        if not grammar.triggers:
            return ll.llama_sampler_init_grammar(self._vocab, grammar.text.encode(), b"root")
        patterns = (ctypes.c_char_p * len(grammar.triggers))(*(t.encode() for t in grammar.triggers))
        return ll.llama_sampler_init_grammar_lazy_patterns(self._vocab, grammar.text.encode(), b"root",
                                                           patterns, len(grammar.triggers), None, 0)

    def sampler(self, grammar: Grammar) -> ll.llama_sampler_p:
        """A fresh grammar sampler for one request (the caller frees it). Engine thread."""
        for _ in range(2):  # kept by the worker's compile(); parsed here only if evicted since
            with self._lock:
                self._check_open()
                kept = self._compiled.get(grammar.digest)
                if kept is not None:
                    clone = ll.llama_sampler_clone(kept[0])
                    if not clone:
                        raise MemoryError("llama_sampler_clone failed")
                    return clone
            self.compile(grammar)
        raise RuntimeError("the grammar was evicted while it was compiled")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.wait_for(lambda: self._num_parsing == 0)
            for sampler, _ in self._compiled.values():
                ll.llama_sampler_free(sampler)
            self._compiled.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the model is unloaded")

    def _keep(self, grammar: Grammar, sampler: ll.llama_sampler_p) -> None:
        with self._lock:
            if self._closed or grammar.digest in self._compiled:  # closed meanwhile, or another parse won
                ll.llama_sampler_free(sampler)
                self._check_open()
                return
            self._compiled[grammar.digest] = (sampler, len(grammar.text))
            # Drops the least recently used beyond the bounds (never the newest).
            while len(self._compiled) > 1 and (len(self._compiled) > MAX_COMPILED
                                               or sum(n for _, n in self._compiled.values()) > MAX_COMPILED_BYTES):
                _, (oldest, _) = self._compiled.popitem(last=False)
                ll.llama_sampler_free(oldest)
