"""`localllm cache stats` and `localllm cache clear`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from localllm.cache.response_cache import ResponseCache, ResponseCacheConfig
from localllm.config import Config, ConfigError

COMMANDS = {"cache"}


def add_commands(sub: argparse._SubParsersAction) -> None:
    cache = sub.add_parser("cache", help="the on-disk response cache")
    actions = cache.add_subparsers(dest="cache_command", required=True)
    for name, text in (("stats", "entries, size, hits and misses"), ("clear", "delete cached answers")):
        action = actions.add_parser(name, help=text)
        action.add_argument("--config", type=Path, help="TOML config file (also LOCALLLM_CONFIG)")
        action.add_argument("--cache-dir", dest="cache_dir", help="default: XDG cache dir")
        if name == "clear":
            action.add_argument("--model", help="only this model's answers (its name)")


def run(args: argparse.Namespace) -> int:
    try:
        config = Config.load(args.config, {"cache_dir": args.cache_dir})
    except ConfigError as exc:
        print(f"localllm: invalid configuration: {exc}", file=sys.stderr)
        return 2
    server = config.server
    cache = ResponseCache(ResponseCacheConfig(config.cache_dir / "responses", server.cache_size_mib * 2**20,
                                              server.cache_ttl_s))
    try:
        if args.cache_command == "stats":
            stats = cache.stats()
            print(json.dumps({k: stats[k] for k in ("directory", "active", "error", "entries", "size_bytes",
                                                     "size_limit_bytes")}, indent=2))
            return 0 if cache.is_active else 1
        removed = cache.clear(args.model)
        print(f"removed {removed} cached answer(s)" + (f" of {args.model}" if args.model else ""))
        return 0
    finally:
        cache.close()
