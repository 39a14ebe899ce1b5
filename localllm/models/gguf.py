"""A pure-Python GGUF header reader: metadata, tensor infos and byte sizes.

The file is memory-mapped, so skipping the tokenizer's 262k-string arrays costs a
loop over offsets and nothing is materialised unless asked for.

A GGUF file is untrusted input (anyone can publish one on the hub): every count and
length is bounded before anything is allocated or looped over, arrays nest at most
MAX_ARRAY_DEPTH deep, the metadata the plan reads must be integers in plausible ranges,
and every way a header can be wrong is a GGUFError.
"""
from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")

# GGUF metadata value types -> struct format (fixed-size scalars only).
_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i",
                            6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# Plausibility bounds: generous for any real model, small enough that a crafted header
# cannot make the reader allocate or loop without end.
MAX_TENSORS = 1 << 18
"""Real models have hundreds to a few thousand (per-expert MoE files tens of thousands)."""
MAX_KV = 1 << 16
"""Real models have tens of metadata keys."""
MAX_KEY_BYTES = 1 << 16
MAX_STRING_BYTES = 16 << 20
"""Chat templates are kilobytes; a 16 MiB string is already absurd."""
MAX_ARRAY_LEN = 1 << 24
"""Vocabularies and merge lists are at most a few hundred thousand entries."""
MAX_ARRAY_DEPTH = 2
"""An array may hold arrays, which may not hold arrays (llama.cpp's own reader takes no nesting)."""
MAX_TENSOR_NAME_BYTES = 1024
MAX_DIMS = 8
MAX_BLOCK_COUNT = 1 << 16
MAX_ALIGNMENT = 1 << 20
_INT_BOUNDS: dict[str, int] = {
    "block_count": MAX_BLOCK_COUNT, "context_length": 1 << 31, "embedding_length": 1 << 20,
    "attention.head_count": 1 << 16, "attention.head_count_kv": 1 << 16,
    "attention.key_length": 1 << 16, "attention.value_length": 1 << 16,
    "attention.sliding_window": 1 << 31, "vocab_size": MAX_ARRAY_LEN,
}
"""Upper bounds of the `{arch}.*` integers the plan and `show` read (absent keys are fine)."""
_PER_LAYER_KEYS = ("attention.head_count", "attention.head_count_kv")
"""May be one integer or one per layer."""

# ggml type id -> (name, elements per block, bytes per block); from ggml's type traits.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}

# general.file_type (llama_ftype) -> the quantisation name users know.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}


class GGUFError(ValueError):
    """The file is not a GGUF file, or is truncated or malformed."""


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    """A metadata array left unread because it is large (e.g. tokenizer.ggml.tokens)."""
    elem_type: int
    count: int


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    """Relative to the start of the tensor data section."""

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.ggml_type, (f"type{self.ggml_type}", 0, 0))[0]

    @property
    def num_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def num_bytes(self) -> int:
        if self.ggml_type not in GGML_TYPES:
            raise GGUFError(f"tensor {self.name!r} has unknown ggml type {self.ggml_type}")
        _, block, size = GGML_TYPES[self.ggml_type]
        return self.num_elements // block * size

    @property
    def layer(self) -> int | None:
        match = _LAYER_RE.match(self.name)
        return int(match.group(1)) if match else None


@dataclass(frozen=True, slots=True)
class GGUFInfo:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_offset: int
    file_size: int
    alignment: int = DEFAULT_ALIGNMENT

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def arch_get(self, suffix: str, default: Any = None) -> Any:
        """`{architecture}.{suffix}`, e.g. arch_get("block_count")."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def block_count(self) -> int:
        return int(self.arch_get("block_count", 0))

    @property
    def context_length(self) -> int:
        return int(self.arch_get("context_length", 0))

    @property
    def embedding_length(self) -> int:
        return int(self.arch_get("embedding_length", 0))

    @property
    def head_count(self) -> int:
        return _first_int(self.arch_get("attention.head_count", 0))

    @property
    def head_count_kv(self) -> int:
        # Absent means no grouped-query attention: as many KV heads as query heads.
        return _first_int(self.arch_get("attention.head_count_kv", self.head_count))

    @property
    def key_length(self) -> int:
        default = self.embedding_length // self.head_count if self.head_count else 0
        return int(self.arch_get("attention.key_length", default))

    @property
    def value_length(self) -> int:
        default = self.embedding_length // self.head_count if self.head_count else 0
        return int(self.arch_get("attention.value_length", default))

    @property
    def sliding_window(self) -> int | None:
        value = self.arch_get("attention.sliding_window")
        return int(value) if value else None

    @property
    def vocab_size(self) -> int:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, ArrayInfo):
            return tokens.count
        if isinstance(tokens, list):
            return len(tokens)
        return int(self.arch_get("vocab_size", 0))

    @property
    def file_type(self) -> str:
        """Quantisation name from general.file_type, else the commonest weight type."""
        ftype = self.metadata.get("general.file_type")
        if ftype is not None:
            return FILE_TYPES.get(int(ftype), f"ftype{ftype}")
        layer_types = [t.type_name for t in self.tensors if t.layer is not None and len(t.shape) > 1]
        return max(set(layer_types), key=layer_types.count) if layer_types else "unknown"

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    @property
    def tool_use_template(self) -> str | None:
        """The variant requests with tools render with (Hermes 2 Pro, Command R carry one)."""
        value = self.metadata.get("tokenizer.chat_template.tool_use")
        return value if isinstance(value, str) else None

    @property
    def tensor_bytes(self) -> int:
        return sum(t.num_bytes for t in self.tensors)

    @property
    def layer_bytes(self) -> tuple[int, ...]:
        """Weight bytes of each `blk.N.*` layer, index N."""
        sizes = [0] * self.block_count
        for t in self.tensors:
            if t.layer is not None and t.layer < len(sizes):
                sizes[t.layer] += t.num_bytes
        return tuple(sizes)

    @property
    def non_layer_bytes(self) -> int:
        """Embeddings, output head and norms: everything outside `blk.N.*`."""
        return sum(t.num_bytes for t in self.tensors if t.layer is None)


def _first_int(value: Any) -> int:
    # Some architectures store per-layer head counts as an array.
    if isinstance(value, list):
        return int(max(value)) if value else 0
    return int(value or 0)


class _Cursor:
    """Bounds-checked little-endian reads over a memory map."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what} (at offset {self.pos})")

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: truncated GGUF header (needs {n} bytes at offset {self.pos})")

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def count(self, what: str, limit: int, min_bytes: int) -> int:
        """A u64 count of things of at least `min_bytes` each, checked against `limit`
        and against the bytes left in the file."""
        value = self.unpack("<Q")
        if value > limit:
            raise self.fail(f"{what} {value} is above the limit of {limit}")
        self.need(value * min_bytes)
        return value

    def string(self, limit: int = MAX_STRING_BYTES) -> str:
        length = self.count("string length", limit, 1)
        raw = bytes(self.buf[self.pos:self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        for _ in range(count):
            length = self.count("string length", MAX_STRING_BYTES, 1)  # moves pos past the length
            self.pos += length

    def value(self, vtype: int, max_array: int, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise self.fail(f"arrays nested more than {MAX_ARRAY_DEPTH} deep")
            return self.array(max_array, depth + 1)
        raise self.fail(f"unknown metadata value type {vtype}")

    def array(self, max_array: int, depth: int) -> list[Any] | ArrayInfo:
        elem_type = self.unpack("<I")
        elem_size = struct.calcsize(_SCALARS[elem_type]) if elem_type in _SCALARS else 8
        count = self.count("array length", MAX_ARRAY_LEN, elem_size)
        if count <= max_array:
            return [self.value(elem_type, max_array, depth) for _ in range(count)]
        if elem_type == _STRING:
            self.skip_strings(count)
        elif elem_type in _SCALARS:
            self.pos += count * elem_size  # count() checked these bytes are there
        else:  # arrays of arrays: rare, walk them (the depth bound stops the recursion)
            for _ in range(count):
                self.value(elem_type, 0, depth)
        return ArrayInfo(elem_type, count)


def read_gguf(path: str | Path, max_array: int = 1024) -> GGUFInfo:
    """Parses the header of `path`; arrays longer than `max_array` become ArrayInfo.
    Raises GGUFError for anything that is not a plausible GGUF file, never another error."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 4 or f.read(4) != GGUF_MAGIC:
                raise GGUFError(f"{path}: not a GGUF file (bad magic)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(_Cursor(buf, path), size, max_array)
    except OSError as exc:
        raise GGUFError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (ValueError, TypeError, OverflowError, ArithmeticError, struct.error, RecursionError) as exc:
        if isinstance(exc, GGUFError):
            raise
        raise GGUFError(f"{path}: malformed GGUF header ({type(exc).__name__}: {exc})") from None


def _parse(cur: _Cursor, file_size: int, max_array: int) -> GGUFInfo:
    cur.pos = 4
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise GGUFError(f"{cur.path}: unsupported GGUF version {version}")
    num_tensors = cur.unpack("<Q")
    if num_tensors > MAX_TENSORS:
        raise cur.fail(f"tensor count {num_tensors} is above the limit of {MAX_TENSORS}")
    num_kv = cur.count("metadata key count", MAX_KV, 12)
    metadata: dict[str, Any] = {}
    for _ in range(num_kv):
        key = cur.string(MAX_KEY_BYTES)
        if key in metadata:
            raise cur.fail(f"duplicate metadata key {key!r}")
        metadata[key] = cur.value(cur.unpack("<I"), max_array)
    _check_metadata(metadata, cur)
    cur.need(num_tensors * 24)  # name length, dims, type and offset: at least 24 bytes each
    tensors = tuple(_tensor_info(cur) for _ in range(num_tensors))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    data_offset = -(-cur.pos // alignment) * alignment
    info = GGUFInfo(cur.path, version, metadata, tensors, data_offset, file_size, alignment)
    _check_extent(info)
    return info


def _check_metadata(metadata: dict[str, Any], cur: _Cursor) -> None:
    """The keys that size things or feed the plan must be integers in plausible ranges."""
    arch = metadata.get("general.architecture", "unknown")
    if not isinstance(arch, str) or len(arch) > 64:
        raise cur.fail("general.architecture is not a short string")
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not _is_int(alignment) or not 0 < alignment <= MAX_ALIGNMENT or alignment & (alignment - 1):
        raise cur.fail(f"general.alignment {alignment!r} is not a power of two up to {MAX_ALIGNMENT}")
    if "general.file_type" in metadata and not _is_int(metadata["general.file_type"], 1 << 16):
        raise cur.fail(f"general.file_type {metadata['general.file_type']!r} is not a small integer")
    for suffix, limit in _INT_BOUNDS.items():
        key = f"{arch}.{suffix}"
        value = metadata.get(key)
        if value is None or _is_int(value, limit):
            continue
        if suffix in _PER_LAYER_KEYS and isinstance(value, list) and all(_is_int(v, limit) for v in value):
            continue
        raise cur.fail(f"{key} {_short(value)} is not an integer from 0 to {limit}")


def _is_int(value: Any, limit: int | None = None) -> bool:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return ok and (limit is None or value <= limit)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _tensor_info(cur: _Cursor) -> TensorInfo:
    name = cur.string(MAX_TENSOR_NAME_BYTES)
    num_dims = cur.unpack("<I")
    if num_dims > MAX_DIMS:
        raise cur.fail(f"tensor {name!r} claims {num_dims} dimensions")
    shape = tuple(cur.unpack("<Q") for _ in range(num_dims))
    ggml_type, offset = cur.unpack("<I"), cur.unpack("<Q")
    if ggml_type not in GGML_TYPES:
        raise cur.fail(f"tensor {name!r} has unknown ggml type {ggml_type}")
    block = GGML_TYPES[ggml_type][1]
    if shape and shape[0] % block:
        raise cur.fail(f"tensor {name!r}: row of {shape[0]} is not a whole number of {block}-element blocks")
    return TensorInfo(name, shape, ggml_type, offset)


def _check_extent(info: GGUFInfo) -> None:
    """A truncated download still has a whole header: check the tensor data fits too."""
    end = max((t.offset + t.num_bytes for t in info.tensors), default=0)
    if info.data_offset + end > info.file_size:
        raise GGUFError(f"{info.path}: truncated GGUF file: tensor data needs "
                        f"{info.data_offset + end} bytes, file has {info.file_size}")
