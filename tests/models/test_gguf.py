"""The GGUF reader on the real bundled model, and on files that are not whole GGUFs."""
from __future__ import annotations

from pathlib import Path

import pytest

from localllm.models.gguf import ArrayInfo, GGUFError, read_gguf


def test_reads_the_bundled_gemma3_header(model_path: Path):
    info = read_gguf(model_path)
    assert info.version == 3
    assert info.architecture == "gemma3"
    assert info.block_count == 18
    assert info.context_length == 32768
    assert info.embedding_length == 640
    assert (info.head_count, info.head_count_kv) == (4, 1)
    assert (info.key_length, info.value_length) == (256, 256)
    assert info.sliding_window == 512
    assert info.vocab_size == 262144
    assert info.file_type == "Q4_K_M"
    assert info.chat_template is None  # base model: the catalogue supplies it


def test_big_arrays_are_skipped_small_ones_read(model_path: Path):
    info = read_gguf(model_path)
    assert info.get("tokenizer.ggml.tokens") == ArrayInfo(elem_type=8, count=262144)
    assert isinstance(info.get("tokenizer.ggml.scores"), ArrayInfo)
    assert info.get("general.tags") == ["gemma3", "gemma", "google", "text-generation"]
    full = read_gguf(model_path, max_array=1 << 20)
    tokens = full.get("tokenizer.ggml.tokens")
    assert isinstance(tokens, list) and len(tokens) == 262144 and "<start_of_turn>" in tokens


def test_tensor_sizes_account_for_every_byte(model_path: Path):
    info = read_gguf(model_path)
    # Tensor data runs exactly to the end of the file: every ggml type size is right.
    assert info.data_offset + info.tensor_bytes == model_path.stat().st_size
    assert len(info.layer_bytes) == 18 and all(b > 0 for b in info.layer_bytes)
    assert sum(info.layer_bytes) + info.non_layer_bytes == info.tensor_bytes
    embd = next(t for t in info.tensors if t.name == "token_embd.weight")
    assert embd.shape == (640, 262144) and embd.layer is None
    assert {t.type_name for t in info.tensors} >= {"F32", "Q4_K", "Q6_K", "Q8_0"}


def test_non_gguf_file_is_rejected(tmp_path: Path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"<html>not found</html>" * 10)
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(bad)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(empty)


def test_missing_file_is_a_gguf_error(tmp_path: Path):
    with pytest.raises(GGUFError, match="cannot read"):
        read_gguf(tmp_path / "nope.gguf")


@pytest.mark.parametrize("keep_bytes, message", [(100_000, "truncated GGUF header"),
                                                 (8_000_000, "truncated GGUF file")])
def test_truncated_file_is_rejected(model_path: Path, tmp_path: Path, keep_bytes: int, message: str):
    cut = tmp_path / "cut.gguf"
    with model_path.open("rb") as src:
        cut.write_bytes(src.read(keep_bytes))
    with pytest.raises(GGUFError, match=message):
        read_gguf(cut)
