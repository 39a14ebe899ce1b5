"""Hand-made GGUF files: a small valid model header, and the hostile variants the
tests craft from it (bytes written exactly as told, lies included)."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FORMATS = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
            U64: "<Q", I64: "<q", F64: "<d"}
F32_TYPE = 0  # ggml type of float32 tensors


@dataclass(frozen=True)
class Typed:
    """A metadata value with its GGUF type spelled out (arrays: `value` is a list of Typed
    or of plain values of `elem`)."""
    vtype: int
    value: Any
    elem: int = U32


def _infer(value: Any) -> Typed:
    if isinstance(value, Typed):
        return value
    if isinstance(value, bool):
        return Typed(BOOL, value)
    if isinstance(value, int):
        return Typed(U32 if 0 <= value < 1 << 32 else U64, value)
    if isinstance(value, float):
        return Typed(F32, value)
    if isinstance(value, str):
        return Typed(STRING, value)
    if isinstance(value, list):
        elem = _infer(value[0]).vtype if value else U32
        return Typed(ARRAY, value, elem)
    raise TypeError(f"cannot encode {value!r}")


def encode_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def encode_value(typed: Typed) -> bytes:
    """The value's bytes, without its type tag."""
    if typed.vtype in _FORMATS:
        return struct.pack(_FORMATS[typed.vtype], typed.value)
    if typed.vtype == STRING:
        return encode_string(typed.value)
    if typed.vtype == ARRAY and isinstance(typed.value, bytes):
        return typed.value  # pre-encoded (deep nesting)
    if typed.vtype == ARRAY:
        items = [item if isinstance(item, Typed) else Typed(typed.elem, item) for item in typed.value]
        return struct.pack("<IQ", typed.elem, len(items)) + b"".join(encode_value(i) for i in items)
    raise ValueError(f"unknown type {typed.vtype}")


def nested_array(depth: int) -> Typed:
    """An array holding an array holding ... `depth` deep, with one u32 at the bottom."""
    raw = struct.pack("<IQI", U32, 1, 7)
    for _ in range(depth - 1):
        raw = struct.pack("<IQ", ARRAY, 1) + raw
    return Typed(ARRAY, raw)


def model_metadata(**overrides: Any) -> dict[str, Any]:
    """A 2-layer llama-like header; an override of None drops the key."""
    metadata: dict[str, Any] = {
        "general.architecture": "llama", "general.name": "crafted", "general.file_type": 15,
        "general.alignment": 32, "llama.block_count": 2, "llama.context_length": 256,
        "llama.embedding_length": 32, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
        "tokenizer.ggml.tokens": ["<s>", "</s>", "a", "b"],
    }
    metadata.update(overrides)
    return {k: v for k, v in metadata.items() if v is not None}


def model_tensors(num_layers: int = 2, width: int = 32) -> list[tuple[str, tuple[int, ...]]]:
    tensors = [("token_embd.weight", (width, 4))]
    tensors += [(f"blk.{i}.attn_q.weight", (width, width)) for i in range(num_layers)]
    return tensors + [("output_norm.weight", (width,))]


def write_gguf(path: Path, metadata: dict[str, Any] | None = None,
               tensors: list[tuple[str, tuple[int, ...]]] | None = None, *, alignment: int = 32,
               num_tensors: int | None = None, num_kv: int | None = None, raw_kv: bytes = b"",
               pad_to: int = 0, fill: bytes = b"\0") -> Path:
    """Writes a GGUF v3 file of float32 tensors. `num_tensors`/`num_kv` override the counts in
    the header (to lie), `raw_kv` is appended to the metadata as is, `pad_to` grows the file
    (the padding is extra tensor data, so the file stays valid)."""
    metadata = model_metadata() if metadata is None else metadata
    tensors = model_tensors() if tensors is None else tensors
    kv = b"".join(encode_string(key) + struct.pack("<I", _infer(v).vtype) + encode_value(_infer(v))
                  for key, v in metadata.items()) + raw_kv
    infos, offset = b"", 0
    for name, shape in tensors:
        infos += encode_string(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        infos += struct.pack("<IQ", F32_TYPE, offset)
        size = 4
        for dim in shape:
            size *= dim
        offset += -(-size // alignment) * alignment
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if num_tensors is None else num_tensors,
                                   len(metadata) if num_kv is None else num_kv) + kv + infos
    header += b"\0" * (-len(header) % alignment)
    data = fill * offset
    body = header + data
    path.write_bytes(body + b"\x01" * max(0, pad_to - len(body)))
    return path
