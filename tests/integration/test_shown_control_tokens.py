"""Control tokens named as markers detokenise as their text (Mistral's [TOOL_CALLS] is one: dropped,
its tool calls could not be parsed); every other control token still renders as nothing."""
from __future__ import annotations

from pathlib import Path

import pytest

from localllm.chat.families import CALL_AND_REASONING_MARKERS
from localllm.engine.llama_backend import BackendConfig, LlamaBackend

# Gemma 3 has none of the call markers; its turn markers are control tokens of the same kind.
MARKER, OTHER = "<start_of_turn>", "<mask>"


@pytest.fixture(scope="module")
def backends(model_path: Path):
    shown = LlamaBackend(BackendConfig(model_path, 512, 1, 64, 2, shown_control_texts=(MARKER, "not a token", "<eos>")))
    plain = LlamaBackend(BackendConfig(model_path, 512, 1, 64, 2))
    yield shown, plain
    shown.close()
    plain.close()


def _only_token(backend: LlamaBackend, text: str) -> int:
    ids = backend.tokenize(text, add_special=False, parse_special=True)
    assert len(ids) == 1, ids
    return ids[0]


def test_a_named_control_token_renders_as_its_text(backends):
    shown, plain = backends
    token = _only_token(shown, MARKER)
    assert plain.token_piece(token) == b""  # the default: control tokens render as nothing
    assert shown.token_piece(token) == MARKER.encode()
    assert shown.detokenize([token, *shown.tokenize("hi", add_special=False)]) == MARKER + "hi"


def test_unnamed_and_end_of_generation_tokens_stay_hidden(backends):
    shown, _ = backends
    assert shown.token_piece(_only_token(shown, OTHER)) == b""
    eos = _only_token(shown, "<eos>")
    assert shown.is_end_of_generation(eos) and shown.token_piece(eos) == b""


def test_the_served_backend_shows_the_parsers_markers():
    assert {"[TOOL_CALLS]", "<|python_tag|>", "<think>", "</think>"} <= set(CALL_AND_REASONING_MARKERS)
