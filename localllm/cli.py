"""Command line: `localllm serve`, and `pull | list | show | rm | plan` (models/commands.py)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from localllm.config import Config, ConfigError, EngineConfig, ServerConfig
from localllm.models import commands as model_commands

_ENGINE = EngineConfig()
_SERVER = ServerConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="localllm", description="Offline-first OpenAI-compatible LLM server.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API",
        description="Every flag also reads from the config file and from LOCALLLM_<FLAG> environment variables "
                    "(flags > environment > config file > defaults).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--model", help=f"catalogue name or .gguf path (default {_ENGINE.model})")
    serve.add_argument("--host", help=f"address to listen on (default {_SERVER.host})")
    serve.add_argument("--port", type=int, help=f"port (default {_SERVER.port})")
    serve.add_argument("--parallel", type=int, help=f"slots decoded together (default {_ENGINE.parallel})")
    serve.add_argument("--ctx", type=int, help=f"KV cache tokens shared by all slots (default {_ENGINE.ctx})")
    serve.add_argument("--batch", type=int, help=f"most tokens per decode step (default {_ENGINE.batch})")
    serve.add_argument("--threads", type=int, help="CPU threads (default: all usable cores)")
    serve.add_argument("--n-gpu-layers", dest="n_gpu_layers",
                       help="layers to offload to the GPU: a number, -1 for all, or auto (default: auto, "
                            "from the memory plan)")
    serve.add_argument("--max-waiting", dest="max_waiting", type=int,
                       help=f"requests that may queue for a slot before 429 (default {_ENGINE.max_waiting})")
    serve.add_argument("--api-key", dest="api_key", help="require this bearer key on /v1 routes")
    serve.add_argument("--drain-timeout", dest="drain_timeout_s", type=float,
                       help=f"seconds SIGTERM waits for in-flight requests (default {_SERVER.drain_timeout_s})")
    serve.add_argument("--data-dir", dest="data_dir", help="models and caches (default: XDG data dir)")
    serve.add_argument("--config", type=Path, help="TOML config file (also LOCALLLM_CONFIG)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    model_commands.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in model_commands.COMMANDS:
        return model_commands.run(args)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config", "log_level")}
    try:
        config = Config.load(args.config, overrides)
    except ConfigError as exc:
        print(f"localllm: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(config)
    return 1


def serve(config: Config) -> int:
    from localllm.server.run import serve as run_server  # imports aiohttp and llama.cpp: only when serving

    return run_server(config)


if __name__ == "__main__":
    sys.exit(main())
