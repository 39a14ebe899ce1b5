"""Memory plan: how many layers go to the GPU, how much context, which KV type.

Pure arithmetic over GGUF facts and free-memory figures (see probe.py for the
figures). Order of concessions when memory is tight: f16 KV -> q8_0 KV -> less
context (down to a floor) -> fewer GPU layers -> less context below the floor.
Context shrinks before layers do because a layer on the CPU costs every token,
while most requests never use the full context.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from itertools import accumulate

from localllm.models.gguf import GGUFError, GGUFInfo

MIB = 1024 * 1024
KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32}
"""q8_0 stores 32 values in 34 bytes (one f16 scale per block)."""
MIN_SLOT_CTX = 256
FLOOR_SLOT_CTX = 2048
"""Context shrinks freely down to this per slot before layers leave the GPU."""


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the plan needs to know about a model; from_gguf() reads it from a file."""
    num_layers: int
    layer_bytes: tuple[int, ...]
    non_layer_bytes: int
    num_kv_heads: int
    key_length: int
    value_length: int
    trained_ctx: int
    num_embd: int
    num_vocab: int
    sliding_window: int | None = None

    @classmethod
    def from_gguf(cls, info: GGUFInfo) -> ModelFacts:
        """Raises GGUFError when the file's figures are unusable (read_gguf bounds them)."""
        try:
            return cls(info.block_count, info.layer_bytes, info.non_layer_bytes, info.head_count_kv,
                       info.key_length, info.value_length, info.context_length, info.embedding_length,
                       info.vocab_size, info.sliding_window)
        except (TypeError, ValueError, ArithmeticError) as exc:
            if isinstance(exc, GGUFError):
                raise
            raise GGUFError(f"{info.path}: unusable model figures ({exc})") from None

    def kv_bytes_per_token_layer(self, kv_type: str) -> float:
        # With swa_full=True (our engine), SWA layers hold the full context too.
        return self.num_kv_heads * (self.key_length + self.value_length) * KV_BYTES_PER_ELEMENT[kv_type]


@dataclass(frozen=True, slots=True)
class Plan:
    n_gpu_layers: int
    ctx: int
    """KV cells in all (EngineConfig.ctx); each slot gets ctx // slots."""
    slots: int
    kv_type: str
    weights_gpu_bytes: int
    weights_cpu_bytes: int
    kv_gpu_bytes: int
    kv_cpu_bytes: int
    compute_bytes: int
    usable_vram_bytes: int
    usable_ram_bytes: int
    fits: bool
    notes: tuple[str, ...]

    @property
    def slot_ctx(self) -> int:
        return self.ctx // self.slots

    @property
    def kv_bytes(self) -> int:
        return self.kv_gpu_bytes + self.kv_cpu_bytes

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "slot_ctx": self.slot_ctx, "kv_bytes": self.kv_bytes,
                           "notes": list(self.notes)}, indent=2)

    def explain(self) -> str:
        lines = [
            f"GPU layers:  {self.n_gpu_layers}",
            f"context:     {self.ctx} tokens in all, {self.slot_ctx} per slot x {self.slots} slots",
            f"KV cache:    {self.kv_type}, {_mib(self.kv_bytes)} ({_mib(self.kv_gpu_bytes)} on GPU)",
            f"weights:     {_mib(self.weights_gpu_bytes)} on GPU, {_mib(self.weights_cpu_bytes)} in RAM",
            f"compute:     {_mib(self.compute_bytes)} (estimate)",
            f"usable:      {_mib(self.usable_vram_bytes)} VRAM, {_mib(self.usable_ram_bytes)} RAM "
            "(free memory less a safety margin)",
            "fits:        " + ("yes" if self.fits else "NO: expect swapping or a failed load"),
        ]
        return "\n".join(lines + [f"- {note}" for note in self.notes])


def _mib(num_bytes: float) -> str:
    return f"{num_bytes / MIB:,.0f} MiB"


GPU_CONTEXT_BYTES = 512 * MIB
"""What the CUDA context, cuBLAS and the driver take on the GPU beyond llama.cpp's buffers
(an H100 served 555 MiB above a plan's budget, 272 of them a KV type since budgeted:
docs/gpu.md finding 5)."""


def usable_vram(free_bytes: int) -> int:
    """Free VRAM the model may fill: less the margin and the GPU context."""
    return max(0, usable(free_bytes, 0.05, 256 * MIB) - GPU_CONTEXT_BYTES)


def usable_ram(free_bytes: int) -> int:
    """Free RAM the model may fill: less the margin."""
    return usable(free_bytes, 0.10, 512 * MIB)


def usable(free_bytes: int, fraction: float, minimum: int) -> int:
    """Free memory less a margin (for the driver, fragmentation and other processes)."""
    return max(0, free_bytes - max(int(free_bytes * fraction), minimum)) if free_bytes > 0 else 0


def compute_bytes(facts: ModelFacts, slot_ctx: int, num_batch: int) -> int:
    """llama.cpp's compute buffer, roughly: logits for a batch, activations, attention scores."""
    logits = num_batch * facts.num_vocab * 4
    activations = num_batch * facts.num_embd * 4 * 8
    scores = num_batch * slot_ctx * max(1, facts.num_kv_heads) * 4 * 4
    return logits + activations + scores + 32 * MIB


@dataclass(frozen=True, slots=True)
class _Budget:
    facts: ModelFacts
    slots: int
    num_batch: int
    vram: int
    ram: int
    prefix_bytes: tuple[int, ...] = field(init=False)
    """prefix_bytes[i] = bytes of the first i layers: split() is O(1), so the plan is linear."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix_bytes", (0, *accumulate(self.facts.layer_bytes)))

    def split(self, layers: int, slot_ctx: int, kv_type: str) -> tuple[int, ...]:
        """(weights_gpu, weights_cpu, kv_gpu, kv_cpu, compute, gpu_total, cpu_total)."""
        f = self.facts
        total = self.prefix_bytes[-1]
        first_gpu = min(f.num_layers - layers, len(f.layer_bytes))  # the last `layers` layers go to the GPU
        all_on_gpu = layers == f.num_layers and layers > 0
        weights_gpu = total - self.prefix_bytes[first_gpu] if layers else 0
        weights_gpu += f.non_layer_bytes if all_on_gpu else 0
        weights_cpu = total + f.non_layer_bytes - weights_gpu
        per_layer_kv = f.kv_bytes_per_token_layer(kv_type) * slot_ctx * self.slots
        kv_gpu, kv_cpu = int(per_layer_kv * layers), int(per_layer_kv * (f.num_layers - layers))
        compute = compute_bytes(f, slot_ctx, self.num_batch)
        gpu_total = weights_gpu + kv_gpu + (compute if layers else 0)
        cpu_total = weights_cpu + kv_cpu + (0 if layers else compute)
        return weights_gpu, weights_cpu, kv_gpu, kv_cpu, compute, gpu_total, cpu_total

    def fits(self, layers: int, slot_ctx: int, kv_type: str) -> bool:
        *_, gpu_total, cpu_total = self.split(layers, slot_ctx, kv_type)
        return gpu_total <= self.vram and cpu_total <= self.ram


def make_plan(facts: ModelFacts, *, free_vram_bytes: int, free_ram_bytes: int, slots: int = 4,
              ctx: int = 8192, num_batch: int = 512, allow_q8_kv: bool = True) -> Plan:
    """The largest setup that fits: all layers on the GPU if possible, the requested
    context (capped at the trained context per slot), f16 KV unless q8_0 is needed."""
    if slots < 1 or ctx < 1:
        raise ValueError("slots and ctx must be at least 1")
    notes: list[str] = []
    want = ctx // slots
    if facts.trained_ctx and want > facts.trained_ctx:
        notes.append(f"context per slot capped at the trained {facts.trained_ctx} (asked {want})")
        want = facts.trained_ctx
    want = max(want, min(MIN_SLOT_CTX, facts.trained_ctx or MIN_SLOT_CTX))
    budget = _Budget(facts, slots, num_batch, usable_vram(free_vram_bytes),
                     usable_ram(free_ram_bytes))
    kv_types = ("f16", "q8_0") if allow_q8_kv else ("f16",)
    layers, slot_ctx, kv_type = _search(budget, want, kv_types, notes)
    if slot_ctx < want:
        notes.append(f"context per slot shrunk from {want} to {slot_ctx} to fit")
    return _finish(budget, layers, slot_ctx, kv_type, notes)


def _search(b: _Budget, want: int, kv_types: tuple[str, ...], notes: list[str]) -> tuple[int, int, str]:
    n = b.facts.num_layers
    max_layers = n if b.vram > 0 else 0
    if b.vram <= 0:
        notes.append("no usable GPU memory: everything runs on the CPU")
    floor = min(want, FLOOR_SLOT_CTX)
    # 1. all wanted layers, full context, f16 then q8_0 KV; 2. shrink context to the floor.
    for slot_ctx in _halvings(want, floor):
        for kv in kv_types:
            if b.fits(max_layers, slot_ctx, kv):
                return max_layers, slot_ctx, kv
    # 3. at the floor, move layers to the CPU one by one.
    for layers in range(max_layers - 1, -1, -1):
        for kv in kv_types:
            if b.fits(layers, floor, kv):
                return layers, floor, kv
    kv = kv_types[-1]
    # 4. below the floor on the CPU alone; else the smallest setup, marked as not fitting.
    for slot_ctx in _halvings(floor, min(floor, MIN_SLOT_CTX)):
        if b.fits(0, slot_ctx, kv):
            return 0, slot_ctx, kv
    return 0, min(floor, MIN_SLOT_CTX), kv


def _halvings(start: int, stop: int) -> list[int]:
    """start, start/2, ... down to stop, inclusive."""
    values = [start]
    while values[-1] > stop:
        values.append(max(stop, values[-1] // 2))
    return values


def _finish(b: _Budget, layers: int, slot_ctx: int, kv_type: str, notes: list[str]) -> Plan:
    w_gpu, w_cpu, kv_gpu, kv_cpu, compute, gpu_total, cpu_total = b.split(layers, slot_ctx, kv_type)
    fits = gpu_total <= b.vram and cpu_total <= b.ram
    n = b.facts.num_layers
    if 0 < layers < n:
        notes.append(f"{n - layers} of {n} layers stay on the CPU: GPU memory is short")
    elif layers == n and n:
        notes.append("all layers fit on the GPU")
    elif b.vram > 0:
        notes.append("GPU memory is too small for one layer plus the compute buffer: CPU only")
    if kv_type == "q8_0":
        notes.append("KV cache quantised to q8_0 to fit (needs flash attention in llama.cpp)")
    if b.facts.sliding_window:
        notes.append(f"sliding-window layers (window {b.facts.sliding_window}) are counted at full "
                     "context, as the engine's default swa_full keeps them (--no-swa-full uses less)")
    if not fits:
        notes.append("even the smallest setup does not fit the free memory")
    return Plan(layers, slot_ctx * b.slots, b.slots, kv_type, w_gpu, w_cpu, kv_gpu, kv_cpu, compute,
                b.vram, b.ram, fits, tuple(notes))
