"""CompiledGrammars on the bundled model's real vocabulary: one llama.cpp parse per distinct
grammar, a clone per request, bounded, and nothing parsed after close."""
from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import pytest

import llama_cpp.llama_cpp as ll
from localllm.constraints import Grammar
from localllm.engine.llama_backend import grammar as gbnf
from localllm.engine.llama_backend.backend import _init_llama_once  # noqa: PLC2701
from localllm.types import InvalidParam

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vocab(model_path: Path) -> Iterator[ll.llama_vocab_p]:
    _init_llama_once()
    params = ll.llama_model_default_params()
    params.vocab_only = True
    model = ll.llama_model_load_from_file(str(model_path).encode(), params)
    assert model
    yield ll.llama_model_get_vocab(model)
    ll.llama_model_free(model)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    seen: list[bytes] = []
    real = gbnf.ll.llama_sampler_init_grammar

    def counting(vocab, text: bytes, root: bytes):
        seen.append(text)
        return real(vocab, text, root)

    monkeypatch.setattr(gbnf.ll, "llama_sampler_init_grammar", counting)
    return seen


def test_one_parse_per_grammar_and_a_clone_per_request(vocab, parses: list[bytes]):
    grammars = gbnf.CompiledGrammars(vocab)
    word = gbnf.json_grammar({"type": "object", "properties": {"w": {"type": "string", "maxLength": 5}}})
    grammars.compile(word)
    grammars.compile(Grammar(word.text))  # the same text: the same digest
    clones = [grammars.sampler(word) for _ in range(3)]
    assert len(parses) == 1 and len({ctypes.cast(c, ctypes.c_void_p).value for c in clones}) == 3
    for clone in clones:
        ll.llama_sampler_free(clone)
    grammars.close()


def test_kept_grammars_are_bounded_and_an_evicted_one_is_parsed_again(vocab, parses: list[bytes]):
    grammars = gbnf.CompiledGrammars(vocab)
    texts = [Grammar(f'root ::= "{i}"') for i in range(gbnf.MAX_COMPILED + 1)]
    for grammar in texts:
        grammars.compile(grammar)
    assert len(parses) == gbnf.MAX_COMPILED + 1
    ll.llama_sampler_free(grammars.sampler(texts[-1]))
    assert len(parses) == gbnf.MAX_COMPILED + 1
    ll.llama_sampler_free(grammars.sampler(texts[0]))  # the least recently used went first
    assert len(parses) == gbnf.MAX_COMPILED + 2
    grammars.close()


def test_refusals_and_closing(vocab, parses: list[bytes]):
    grammars = gbnf.CompiledGrammars(vocab)
    with pytest.raises(InvalidParam) as caught:
        grammars.compile(Grammar("root ::= root"))  # left recursion: llama.cpp refuses it
    assert caught.value.param == "response_format"
    with pytest.raises(TypeError):
        grammars.compile('root ::= "a"')  # type: ignore[arg-type]  # unchecked text never reaches llama.cpp
    grammars.compile(Grammar('root ::= "a"'))
    grammars.close()
    with pytest.raises(RuntimeError):
        grammars.sampler(Grammar('root ::= "a"'))
    with pytest.raises(RuntimeError):
        grammars.compile(Grammar('root ::= "b"'))
    assert len(parses) == 2
