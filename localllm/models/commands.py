"""`localllm pull | list | show | rm | plan`: model management on the command line.

User errors exit 2, failed downloads or checks exit 1; messages, never tracebacks.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from localllm.chat.families import detect_family
from localllm.config import Config, ConfigError
from localllm.models.gguf import GGUFError, GGUFInfo, read_gguf
from localllm.models.catalogue import open_store
from localllm.models.registry import CatalogueError, ModelSpec, UnknownModel
from localllm.models.store import ModelFileError, ModelStore

COMMANDS = ("pull", "list", "show", "rm", "plan")
MIB = 1024 * 1024


def add_commands(sub: argparse._SubParsersAction) -> None:
    pull = sub.add_parser("pull", help="download a model from the Hugging Face hub")
    pull.add_argument("model", help="catalogue name, or ORG/REPO/FILE.gguf")
    pull.add_argument("--quant", default="auto",
                      help="quantisation, e.g. Q8_0; auto (default) picks by the memory free now")
    pull.add_argument("--offline", action="store_true", help="never touch the network (also HF_HUB_OFFLINE=1)")
    pull.add_argument("--vram-mib", type=int, help=argparse.SUPPRESS)  # tests: memory to choose the quant for
    pull.add_argument("--ram-mib", type=int, help=argparse.SUPPRESS)
    sub.add_parser("list", help="catalogue models and what is downloaded")
    show = sub.add_parser("show", help="GGUF metadata of a model")
    show.add_argument("model", help="catalogue name, NAME:QUANT or .gguf path")
    rm = sub.add_parser("rm", help="delete a model's local files")
    rm.add_argument("model")
    plan = sub.add_parser("plan", help="GPU layers, context and KV type that fit free memory")
    plan.add_argument("model", help="catalogue name, NAME:QUANT or .gguf path")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--vram-mib", type=int, help="free GPU memory to plan for (default: measured)")
    plan.add_argument("--ram-mib", type=int, help="free RAM to plan for (default: measured)")
    plan.add_argument("--parallel", type=int, help="slots (default: the configured parallel)")
    plan.add_argument("--ctx", type=int, help="KV cells in all (default: the configured ctx)")
    for parser in (pull, sub.choices["list"], show, rm, plan):
        parser.add_argument("--data-dir", dest="data_dir", help="models and caches (default: XDG data dir)")
        parser.add_argument("--config", type=Path, help="TOML config file (also LOCALLLM_CONFIG)")


def run(args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[argparse.Namespace, Config, ModelStore], int]] = {
        "pull": _pull, "list": _list, "show": _show, "rm": _rm, "plan": _plan}
    try:
        config = Config.load(args.config, {"data_dir": args.data_dir})
        store = open_store(config)
        return handlers[args.command](args, config, store)
    except (ConfigError, CatalogueError, UnknownModel, GGUFError, ValueError) as exc:
        return _fail(str(exc), 2)
    except ModelFileError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _fail(message: str, code: int) -> int:
    print(f"localllm: {message}", file=sys.stderr)
    return code


def _pull(args: argparse.Namespace, config: Config, store: ModelStore) -> int:
    from tqdm import tqdm

    from localllm.models.hub import pull, target_for

    quant = None if args.quant == "auto" else args.quant
    spec = store.catalogue.get(args.model)
    if quant is None and spec is not None and spec.hf_repo and len(spec.quants) > 1:
        quant = _auto_quant(args, config, store)
    target = target_for(args.model, store.catalogue, quant)
    record = pull(store, target, offline=args.offline, endpoint=config.hf_endpoint, tqdm_class=tqdm)
    print(f"{record.name} {record.quant}: {record.size / MIB:,.0f} MiB, verified, at {record.path}")
    return 0


def _auto_quant(args: argparse.Namespace, config: Config, store: ModelStore) -> str:
    """Prints and returns the quant that fits the memory free now (--vram-mib/--ram-mib override
    the measured figures, as for `plan`); see quant_choice.py for the rule."""
    from localllm.models.hub import auto_quant
    from localllm.models.probe import free_ram_bytes, free_vram_bytes
    from localllm.models.quant_choice import NothingFits

    spec = store.catalogue[args.model]
    vram = args.vram_mib * MIB if args.vram_mib is not None else free_vram_bytes()
    ram = args.ram_mib * MIB if args.ram_mib is not None else free_ram_bytes()
    try:
        quant, reason = auto_quant(spec, free_vram_bytes=vram, free_ram_bytes=ram,
                                   facts=_local_facts(store, args.model), slots=config.engine.parallel,
                                   ctx=config.engine.ctx, num_batch=config.engine.batch,
                                   offline=args.offline, endpoint=config.hf_endpoint)
    except NothingFits as exc:
        raise ModelFileError(str(exc)) from None
    print(f"quantisation {reason}")
    return quant


def _local_facts(store: ModelStore, name: str):
    """Attention shape of any local quant of `name` (KV size does not depend on the quant); else None."""
    from localllm.models.plan import ModelFacts

    spec = store.catalogue[name]
    paths = [Path(r.path) for r in store.pulled(name)] + [store.models_dir / name / spec.file]
    for path in (p for p in paths if p.is_file()):
        try:
            return ModelFacts.from_gguf(read_gguf(path))
        except (GGUFError, OSError):
            continue
    return None


def _list(args: argparse.Namespace, config: Config, store: ModelStore) -> int:
    rows = [("NAME", "QUANT", "SIZE", "LOCAL", "SOURCE")]
    for name in sorted(set(store.catalogue) | set(store.pulled_names())):
        spec = store.catalogue.get(name)
        pulled = {r.quant: r for r in store.pulled(name)}
        for quant in sorted(set(spec.quants if spec else []) | set(pulled)):
            local, size = _local_state(store, name, quant, pulled)
            source = (spec.hf_repo or f"bundled ({spec.bundled})") if spec else pulled[quant].hf_repo
            rows.append((name, quant, f"{size / MIB:,.0f} MiB" if size else "-", local, source or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _local_state(store: ModelStore, name: str, quant: str, pulled: dict) -> tuple[str, int | None]:
    if quant in pulled:
        return "yes", pulled[quant].size
    spec = store.catalogue[name]
    placed = store.models_dir / name / spec.file
    if quant == spec.quant and placed.is_file():
        return "yes", placed.stat().st_size
    if spec.bundled and quant == spec.quant:
        return "bundled", spec.size_bytes
    return "no", spec.size_bytes if quant == spec.quant else None


def _show(args: argparse.Namespace, config: Config, store: ModelStore) -> int:
    path, spec = store.resolve(args.model)
    info = read_gguf(path)
    template = ("catalogue override" if spec and spec.chat_template
                else "in GGUF" if info.chat_template else "none")
    rows = [
        ("file", str(path)), ("architecture", info.architecture), ("quantisation", info.file_type),
        ("layers", str(info.block_count)), ("trained context", str(info.context_length)),
        ("embedding", str(info.embedding_length)), ("heads", str(info.head_count)),
        ("KV heads", str(info.head_count_kv)), ("head dim (K/V)", f"{info.key_length}/{info.value_length}"),
        ("sliding window", str(info.sliding_window or "-")), ("vocabulary", str(info.vocab_size)),
        ("weights", f"{info.tensor_bytes / MIB:,.0f} MiB in {len(info.tensors)} tensors"),
        ("chat template", template),
        *_tool_rows(_tools_template(spec, info), spec),
    ]
    for key, value in rows:
        print(f"{key + ':':<17}{value}")
    return 0


def _tools_template(spec: ModelSpec | None, info: GGUFInfo) -> str | None:
    """The template a request with tools renders with, as the server picks it
    (LoadedModel.template_source): the catalogue's, else the GGUF's tool-use variant, else its own."""
    if spec and spec.chat_template:
        return spec.chat_template
    return info.tool_use_template or info.chat_template


def _tool_rows(template: str | None, spec: ModelSpec | None) -> list[tuple[str, str]]:
    """Template family, and whether chat requests can use tools and get reasoning apart."""
    if not template:
        return [("tools", "no (no chat template: only /v1/completions)"), ("reasoning", "no")]
    override = spec.template_family if spec else None
    family = detect_family(template, override)
    tools = ("native (the template renders them)" if family.native_tools
             else "fallback (tool list and JSON call format in the system message)")
    reasoning = f"yes ({family.think_open} ... {family.think_close})" if family.reasons else "no"
    return [("template family", f"{family.name} ({'catalogue' if override else 'detected'})"),
            ("tools", tools), ("reasoning", reasoning)]


def _rm(args: argparse.Namespace, config: Config, store: ModelStore) -> int:
    removed = store.remove(args.model)
    print(f"removed {args.model}" if removed else f"{args.model} had no local files")
    return 0


def _plan(args: argparse.Namespace, config: Config, store: ModelStore) -> int:
    """The plan `serve` would use (compose.serving_plan), for the memory given or measured now."""
    from localllm.compose import serving_plan
    from localllm.engine.errors import BackendError

    path, _ = store.resolve(args.model)
    config = config.with_engine(parallel=args.parallel or config.engine.parallel, ctx=args.ctx or config.engine.ctx)
    try:
        offload = serving_plan(config, path, free_vram_bytes=None if args.vram_mib is None else args.vram_mib * MIB,
                               free_ram_bytes=None if args.ram_mib is None else args.ram_mib * MIB)
    except BackendError as exc:  # an rpc-server that cannot be reached
        raise ModelFileError(str(exc)) from None
    print(json.dumps(offload.to_dict(), indent=2) if args.json else offload.explain())
    return 0
