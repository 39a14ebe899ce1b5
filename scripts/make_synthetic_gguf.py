"""Random-weight GGUF of a real architecture and size, with a real tokenizer, quantised
by llama.cpp's own llama-quantize.

Speed depends on a model's shape and quantisation, not on its weights, so this is how
8B-class models are benchmarked with no network:

    python scripts/make_synthetic_gguf.py --out /tmp/llama8b-q4_k_m.gguf \\
        --llama-quantize /path/to/llama-quantize            # Llama-3.1-8B shape, Q4_K_M
    python scripts/make_synthetic_gguf.py --shape tiny --out /tmp/tiny.gguf --llama-quantize ...
    python scripts/make_synthetic_gguf.py --layers 2 --d-model 256 --heads 4 --kv-heads 2 \\
        --ffn 512 --no-quantize --out /tmp/tiny-f16.gguf     # any shape by flag

The tokenizer (every `tokenizer.*` key) is copied from a vocab-only GGUF such as
llama.cpp's models/ggml-vocab-llama-bpe.gguf (Llama 3's 128,256-token BPE), which fixes
the vocabulary size. Weights are drawn once from N(0, std) into a pool (numpy, fixed
seed) and tensors are cut from it at random offsets: fast, reproducible, and finite
activations with the default std of 0.02. Norm weights are ones. The F16 (or BF16)
file is written tensor by tensor with gguf-py (it ships inside the llama-cpp-python
sdist: vendor/llama.cpp/gguf-py), then quantised (Q4_K_M by default).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP_CANDIDATES = [
    ROOT / ".devcarry/llama_cpp_python/vendor/llama.cpp",
    Path("/tmp/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp"),
]
POOL_ELEMENTS = (1 << 24) + 4099
"""Odd length so that consecutive rows cut from the pool do not repeat in step."""


@dataclass(frozen=True, slots=True)
class Shape:
    num_layers: int
    d_model: int
    num_heads: int
    num_kv_heads: int
    d_ffn: int
    rope_theta: float = 500000.0
    ctx_train: int = 131072
    tied_embeddings: bool = False
    """Llama 3.2 1B/3B reuse token_embd as the output matrix; 8B has its own."""
    rms_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


SHAPES = {
    "llama3.1-8b": Shape(32, 4096, 32, 8, 14336),
    "llama3.2-3b": Shape(28, 3072, 24, 8, 8192, tied_embeddings=True),
    "llama3.2-1b": Shape(16, 2048, 32, 8, 8192, tied_embeddings=True),
    "tiny": Shape(2, 256, 4, 2, 512, ctx_train=8192),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="final GGUF (quantised unless --no-quantize)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama3.1-8b")
    p.add_argument("--layers", type=int, help="override the shape's layer count")
    p.add_argument("--d-model", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--kv-heads", type=int)
    p.add_argument("--ffn", type=int)
    p.add_argument("--rope-theta", type=float)
    p.add_argument("--ctx-train", type=int)
    p.add_argument("--tied", action=argparse.BooleanOptionalAction, default=None,
                   help="share token_embd as the output matrix (default: as the shape)")
    p.add_argument("--dtype", choices=["f16", "bf16"], default="f16", help="unquantised weight type")
    p.add_argument("--quant", default="Q4_K_M", help="llama-quantize type (default Q4_K_M)")
    p.add_argument("--no-quantize", action="store_true", help="stop at the F16/BF16 file (written to --out)")
    p.add_argument("--keep-unquantized", action="store_true", help="keep the F16/BF16 file next to --out")
    p.add_argument("--llama-quantize", help="llama-quantize binary (default: on PATH)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama-quantize threads")
    p.add_argument("--llama-cpp", type=Path, help="llama.cpp source tree (for gguf-py and the vocab)")
    p.add_argument("--vocab", type=Path, help="vocab-only GGUF (default models/ggml-vocab-llama-bpe.gguf)")
    p.add_argument("--chat-template", type=Path,
                   help="Jinja file for tokenizer.chat_template (default: models/templates/"
                        "meta-llama-Llama-3.1-8B-Instruct.jinja when present)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--std", type=float, default=0.02)
    return p.parse_args(argv)


def shape_from(args: argparse.Namespace) -> Shape:
    shape = SHAPES[args.shape]
    overrides = {"num_layers": args.layers, "d_model": args.d_model, "num_heads": args.heads,
                 "num_kv_heads": args.kv_heads, "d_ffn": args.ffn, "rope_theta": args.rope_theta,
                 "ctx_train": args.ctx_train, "tied_embeddings": args.tied}
    shape = replace(shape, **{k: v for k, v in overrides.items() if v is not None})
    if shape.d_model % shape.num_heads or shape.num_heads % shape.num_kv_heads:
        sys.exit("d_model must divide by heads, and heads by kv-heads")
    return shape


def find_llama_cpp(explicit: Path | None) -> Path:
    for candidate in [explicit, os.environ.get("LLAMA_CPP_SRC"), *LLAMA_CPP_CANDIDATES]:
        if candidate and (Path(candidate) / "gguf-py").is_dir():
            return Path(candidate)
    sys.exit("llama.cpp sources not found: pass --llama-cpp (the sdist's vendor/llama.cpp)")


class WeightPool:
    """Tensors cut from one pool of N(0, std) values at random offsets."""

    def __init__(self, seed: int, std: float, dtype: str) -> None:
        self.rng = np.random.default_rng(seed)
        pool = self.rng.standard_normal(POOL_ELEMENTS, dtype=np.float32) * np.float32(std)
        if dtype == "bf16":  # round-to-nearest-even on the upper 16 bits
            bits = pool.view(np.uint32)
            self.pool = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        else:
            self.pool = pool.astype(np.float16)

    def tensor(self, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        out = np.empty(count, dtype=self.pool.dtype)
        pos, start = 0, int(self.rng.integers(POOL_ELEMENTS))
        while pos < count:
            take = min(count - pos, POOL_ELEMENTS - start)
            out[pos:pos + take] = self.pool[start:start + take]
            pos, start = pos + take, 0
        return out.reshape(shape)


def tensor_plan(shape: Shape, num_vocab: int) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, numpy shape (rows = output features), is_norm) in llama.cpp's order."""
    d, kv = shape.d_model, shape.num_kv_heads * shape.head_dim
    plan = [("token_embd.weight", (num_vocab, d), False)]
    for i in range(shape.num_layers):
        b = f"blk.{i}."
        plan += [(b + "attn_norm.weight", (d,), True), (b + "attn_q.weight", (d, d), False),
                 (b + "attn_k.weight", (kv, d), False), (b + "attn_v.weight", (kv, d), False),
                 (b + "attn_output.weight", (d, d), False), (b + "ffn_norm.weight", (d,), True),
                 (b + "ffn_gate.weight", (shape.d_ffn, d), False), (b + "ffn_up.weight", (shape.d_ffn, d), False),
                 (b + "ffn_down.weight", (d, shape.d_ffn), False)]
    plan.append(("output_norm.weight", (d,), True))
    if not shape.tied_embeddings:
        plan.append(("output.weight", (num_vocab, d), False))
    return plan


def write_unquantized(path: Path, shape: Shape, args: argparse.Namespace, llama_cpp: Path) -> int:
    """Writes the F16/BF16 GGUF tensor by tensor; returns its parameter count."""
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    import gguf

    vocab_path = args.vocab or llama_cpp / "models/ggml-vocab-llama-bpe.gguf"
    reader = gguf.GGUFReader(vocab_path)
    tokens = reader.fields["tokenizer.ggml.tokens"]
    num_vocab = len(tokens.data)
    arch = "llama"
    writer = gguf.GGUFWriter(path, arch)
    label = f"{shape.num_layers}L-{shape.d_model}d"
    writer.add_name(f"synthetic-{args.shape}-{label}")
    writer.add_description("random weights (scripts/make_synthetic_gguf.py): for speed tests only")
    writer.add_context_length(shape.ctx_train)
    writer.add_embedding_length(shape.d_model)
    writer.add_block_count(shape.num_layers)
    writer.add_feed_forward_length(shape.d_ffn)
    writer.add_head_count(shape.num_heads)
    writer.add_head_count_kv(shape.num_kv_heads)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_vocab_size(num_vocab)
    bf16 = args.dtype == "bf16"
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if bf16 else gguf.LlamaFileType.MOSTLY_F16)
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            _copy_field(writer, gguf, key, field)
    template = args.chat_template or llama_cpp / "models/templates/meta-llama-Llama-3.1-8B-Instruct.jinja"
    if "tokenizer.chat_template" not in reader.fields and Path(template).is_file():
        writer.add_chat_template(Path(template).read_text())

    plan = tensor_plan(shape, num_vocab)
    raw = gguf.GGMLQuantizationType.BF16 if bf16 else None
    weight_dtype = np.uint16 if bf16 else np.float16
    for name, dims, is_norm in plan:
        if is_norm:
            writer.add_tensor_info(name, dims, np.dtype(np.float32), 4 * int(np.prod(dims)))
        else:
            writer.add_tensor_info(name, dims, np.dtype(weight_dtype), 2 * int(np.prod(dims)), raw_dtype=raw)
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    pool = WeightPool(args.seed, args.std, args.dtype)
    for name, dims, is_norm in plan:
        writer.write_tensor_data(np.ones(dims, np.float32) if is_norm else pool.tensor(dims))
    writer.close()
    return sum(int(np.prod(dims)) for _, dims, _ in plan)


def _copy_field(writer, gguf, key: str, field) -> None:
    kind = field.types[0]
    if kind == gguf.GGUFValueType.ARRAY:
        writer.add_key_value(key, list(field.contents()), kind, sub_type=field.types[-1])
    else:
        writer.add_key_value(key, field.contents(), kind)


def quantize(binary: str, src: Path, dst: Path, quant: str, threads: int) -> None:
    subprocess.run([binary, str(src), str(dst), quant, str(threads)], check=True,
                   stdout=subprocess.DEVNULL if os.environ.get("QUIET") else None)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    shape = shape_from(args)
    llama_cpp = find_llama_cpp(args.llama_cpp)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    unquantized = args.out if args.no_quantize else args.out.with_name(args.out.stem + f"-{args.dtype}.gguf")
    started = time.monotonic()
    params = write_unquantized(unquantized, shape, args, llama_cpp)
    wrote_s = time.monotonic() - started
    print(f"wrote {unquantized} ({params / 1e9:.2f} B parameters, {unquantized.stat().st_size / 2**30:.2f} GiB) "
          f"in {wrote_s:.1f} s", flush=True)
    if args.no_quantize:
        return
    binary = args.llama_quantize or "llama-quantize"
    started = time.monotonic()
    quantize(binary, unquantized, args.out, args.quant, args.threads)
    print(f"quantised to {args.quant}: {args.out} ({args.out.stat().st_size / 2**30:.2f} GiB) "
          f"in {time.monotonic() - started:.1f} s", flush=True)
    if not args.keep_unquantized:
        unquantized.unlink()


if __name__ == "__main__":
    main()
