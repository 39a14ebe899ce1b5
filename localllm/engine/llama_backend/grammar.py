"""response_format -> a bounded GBNF `Grammar`, and llama.cpp grammars compiled once per digest.

`json_grammar` runs in a worker thread (never the event loop): the schema passes
`localllm.constraints.check_schema` before llama_cpp's converter writes any text,
and the text passes `check_gbnf` (inside `Grammar`) before llama.cpp parses it.
`CompiledGrammars` parses each distinct grammar once and keeps it; every request
gets a clone (`llama_sampler_clone` copies the parsed rules, no second parse).
"""
from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict

import llama_cpp.llama_cpp as ll
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from localllm.constraints import Grammar, check_schema, schema_error

log = logging.getLogger(__name__)

JSON_OBJECT = Grammar(JSON_GBNF)
"""response_format {"type": "json_object"}: any JSON value llama_cpp's JSON grammar allows."""
MAX_COMPILED = 32
MAX_COMPILED_BYTES = 4 * 1024 * 1024
"""Compiled grammars kept for reuse: at most this many, of at most this much grammar text."""


def json_grammar(schema: dict | None) -> Grammar:
    """GBNF for any JSON object (schema None) or for a JSON schema. Raises InvalidParam
    (param response_format) for a schema past the bounds or one the converter cannot take."""
    if schema is None:
        return JSON_OBJECT
    check_schema(schema)
    try:
        text = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter asserts, raises KeyError, ValueError...: all mean "unsupported"
        log.debug("json_schema_to_gbnf refused a schema: %r", exc)
        raise schema_error(f"unsupported JSON schema: {type(exc).__name__}: {exc}"[:500]) from None
    return Grammar(text)


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
            sampler = ll.llama_sampler_init_grammar(self._vocab, grammar.text.encode(), b"root")
        finally:
            with self._lock:
                self._num_parsing -= 1
                self._lock.notify_all()
        if not sampler:
            raise schema_error("the output grammar could not be parsed")
        self._keep(grammar, sampler)

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
