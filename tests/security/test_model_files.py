"""Issue 14 item 10: GGUF metadata is untrusted. Crafted headers must fail fast with a
GGUFError (never a MemoryError, RecursionError, TypeError or a hang), and the memory
plan must be linear in the number of layers."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from localllm.models.gguf import MAX_BLOCK_COUNT, GGUFError, read_gguf
from localllm.models.plan import ModelFacts, make_plan
from tests.security.gguf_files import (
    ARRAY, STRING, U32, U64, Typed, encode_string, model_metadata, model_tensors, nested_array, write_gguf,
)

MIB = 1024 * 1024


def facts_of(path: Path) -> ModelFacts:
    """What the plan, `show` and a pull's verification read from a file."""
    return ModelFacts.from_gguf(read_gguf(path))


def test_the_crafted_baseline_is_a_valid_model(tmp_path: Path):
    facts = facts_of(write_gguf(tmp_path / "ok.gguf"))
    assert (facts.num_layers, facts.num_kv_heads, facts.num_vocab) == (2, 2, 4)
    assert facts.layer_bytes == (4096, 4096)


@pytest.mark.parametrize("value", [2_000_000_000, MAX_BLOCK_COUNT + 1, Typed(U64, 1 << 62)])
def test_huge_block_count_is_refused_before_anything_is_sized_by_it(tmp_path: Path, value):
    path = write_gguf(tmp_path / "m.gguf", model_metadata(**{"llama.block_count": value}))
    with pytest.raises(GGUFError, match="llama.block_count"):
        facts_of(path)


@pytest.mark.parametrize("alignment", ["32", 1.5, 0, 48, Typed(U64, 1 << 40), [32]])
def test_alignment_must_be_a_power_of_two_integer(tmp_path: Path, alignment):
    path = write_gguf(tmp_path / "m.gguf", model_metadata(**{"general.alignment": alignment}))
    with pytest.raises(GGUFError, match="general.alignment"):
        read_gguf(path)


@pytest.mark.parametrize("key,value", [
    ("llama.block_count", "two"), ("llama.context_length", 1.5), ("llama.embedding_length", [32]),
    ("llama.attention.head_count", ["a", "b"]), ("llama.attention.head_count_kv", [[1, 2], [3]]),
    ("llama.attention.key_length", Typed(U64, 1 << 40)), ("llama.attention.sliding_window", "x"),
    ("general.file_type", "Q4_K_M"), ("general.architecture", 7),
])
def test_plan_figures_of_the_wrong_type_are_gguf_errors(tmp_path: Path, key, value):
    path = write_gguf(tmp_path / "m.gguf", model_metadata(**{key: value}))
    with pytest.raises(GGUFError):
        facts_of(path)


def test_per_layer_head_counts_are_still_read(tmp_path: Path):
    path = write_gguf(tmp_path / "m.gguf", model_metadata(**{"llama.attention.head_count_kv": [2, 4]}))
    assert facts_of(path).num_kv_heads == 4


@pytest.mark.parametrize("depth", [3, 50, 20_000])
def test_nested_arrays_are_bounded(tmp_path: Path, depth: int):
    path = write_gguf(tmp_path / "m.gguf", model_metadata(**{"custom.nested": nested_array(depth)}))
    with pytest.raises(GGUFError, match="nested more than"):
        read_gguf(path)


def test_one_level_of_array_nesting_is_read(tmp_path: Path):
    path = write_gguf(tmp_path / "m.gguf", model_metadata(**{"custom.pairs": nested_array(2)}))
    assert read_gguf(path).get("custom.pairs") == [[7]]


def test_counts_and_lengths_beyond_the_file_or_the_bounds_fail_fast(tmp_path: Path):
    lies = {
        "tensor count": write_gguf(tmp_path / "t.gguf", num_tensors=1 << 40),
        "key count": write_gguf(tmp_path / "k.gguf", num_kv=1 << 40),
        # a million-element array of u32 claimed in a file of a few KiB
        "array": write_gguf(tmp_path / "a.gguf", model_metadata(), num_kv=len(model_metadata()) + 1,
                            raw_kv=encode_string("x") + struct.pack("<IIQ", ARRAY, U32, 1 << 20)),
        # an array of 2**40 arrays: the old reader walked it element by element
        "arrays": write_gguf(tmp_path / "aa.gguf", model_metadata(), num_kv=len(model_metadata()) + 1,
                             raw_kv=encode_string("x") + struct.pack("<IIQ", ARRAY, ARRAY, 1 << 40)),
        "string": write_gguf(tmp_path / "s.gguf", model_metadata(), num_kv=len(model_metadata()) + 1,
                             raw_kv=encode_string("x") + struct.pack("<IQ", STRING, 1 << 62)),
    }
    for what, path in lies.items():
        with pytest.raises(GGUFError):
            read_gguf(path)
        assert path.stat().st_size < 64 * 1024, what


def test_a_string_above_the_bound_is_refused_even_when_the_file_holds_it(tmp_path: Path):
    path = write_gguf(tmp_path / "m.gguf", model_metadata(**{"tokenizer.chat_template": "x" * (17 * MIB)}))
    with pytest.raises(GGUFError, match="string length"):
        read_gguf(path)


def test_duplicate_keys_and_unknown_tensor_types_are_refused(tmp_path: Path):
    meta = model_metadata()
    dup = write_gguf(tmp_path / "d.gguf", meta, num_kv=len(meta) + 1,
                     raw_kv=encode_string("llama.block_count") + struct.pack("<II", U32, 4000))
    with pytest.raises(GGUFError, match="duplicate metadata key"):
        read_gguf(dup)
    bad_rows = write_gguf(tmp_path / "r.gguf", tensors=[("blk.0.x", (0, 3)), *model_tensors()])
    read_gguf(bad_rows)  # F32 rows of any length are fine; a quantised type is checked below
    data = bytearray(write_gguf(tmp_path / "u.gguf").read_bytes())
    at = bytes(data).index(encode_string("token_embd.weight")) + len(encode_string("token_embd.weight"))
    struct.pack_into("<I", data, at + 4 + 16, 99)  # after n_dims and two dims: the ggml type
    (tmp_path / "u.gguf").write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="ggml type 99"):
        read_gguf(tmp_path / "u.gguf")


def test_every_damaged_header_is_a_gguf_error_or_a_usable_model(tmp_path: Path):
    """Every header byte set to 0x00 and 0xff, and every third truncation of the header:
    each read either gives figures the plan can use, or raises GGUFError, nothing else."""
    good = write_gguf(tmp_path / "good.gguf").read_bytes()
    header_end = good.index(b"\0" * 64)  # the tensor data (zeros) follows the header
    path = tmp_path / "bad.gguf"
    damaged = [good[:cut] for cut in range(0, header_end, 3)]
    for pos in range(4, header_end):
        for byte in (0x00, 0xFF):
            damaged.append(good[:pos] + bytes([byte]) + good[pos + 1:])
    outcomes = {"ok": 0, "GGUFError": 0}
    for data in damaged:
        path.write_bytes(data)
        try:
            make_plan(facts_of(path), free_vram_bytes=0, free_ram_bytes=8 << 30)
            outcomes["ok"] += 1
        except GGUFError:
            outcomes["GGUFError"] += 1
    assert outcomes["GGUFError"] > 100 and outcomes["ok"] > 100, outcomes


class CountingSizes(tuple):
    """Layer sizes that count how many elements the plan reads."""
    touched = 0

    def __iter__(self):
        for item in super().__iter__():
            CountingSizes.touched += 1
            yield item

    def __getitem__(self, index):
        result = super().__getitem__(index)
        CountingSizes.touched += len(result) if isinstance(index, slice) else 1
        return result


@pytest.mark.parametrize("num_layers", [100, 2000])
def test_the_plan_reads_each_layer_size_a_bounded_number_of_times(num_layers: int):
    """GPU memory for no single layer: the plan tries every split from all layers to none.
    The old plan re-summed the layer sizes per split (O(n²): 8,000 layers took a second,
    a million hours); now it reads them a constant number of times."""
    sizes = CountingSizes([64 * MIB] * num_layers)
    facts = ModelFacts(num_layers, sizes, 16 * MIB, num_kv_heads=1, key_length=64, value_length=64,
                       trained_ctx=4096, num_embd=256, num_vocab=1000)
    CountingSizes.touched = 0
    plan = make_plan(facts, free_vram_bytes=1024 * MIB, free_ram_bytes=1 << 50, slots=1, ctx=2048)
    assert plan.n_gpu_layers < num_layers and plan.fits
    assert CountingSizes.touched <= 4 * num_layers, CountingSizes.touched


def test_a_plan_for_the_largest_plausible_block_count_is_quick_to_make(tmp_path: Path):
    meta = model_metadata(**{"llama.block_count": MAX_BLOCK_COUNT})
    facts = facts_of(write_gguf(tmp_path / "m.gguf", meta))
    assert facts.num_layers == MAX_BLOCK_COUNT
    # The KV cache of 65,536 layers does not fit 1.2 GiB of usable VRAM: the plan walks the
    # layers down one by one until it does.
    plan = make_plan(facts, free_vram_bytes=2048 * MIB, free_ram_bytes=1 << 40)
    assert 0 < plan.n_gpu_layers < MAX_BLOCK_COUNT and plan.fits
