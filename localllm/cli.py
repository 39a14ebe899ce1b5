"""Command line: `localllm serve`, `config show`, `service install`, and `pull | list | show | rm | plan`
(models/commands.py)."""
from __future__ import annotations

import sys

# When serving, llama.cpp's native libraries load before any other extension module: on the
# H100 image, with other libraries loaded first, `localllm serve` segfaulted in the model load
# while the same load ran after a bare `import llama_cpp` (docs/gpu.md, "Found on the GPU" 1).
# Other commands (list, pull, tui...) never load llama.cpp.
if "serve" in sys.argv[1:]:
    import faulthandler

    faulthandler.enable()  # a native crash (llama.cpp) leaves every thread's stack in the log
    import localllm.engine.llama_backend  # noqa: F401, I001

import argparse
from pathlib import Path

from localllm.bench import commands as bench_commands
from localllm.cache import commands as cache_commands
from localllm.config import LOG_LEVELS, REASONING_FORMATS, Config, ConfigError, EngineConfig, ServerConfig
from localllm.lb import commands as lb_commands
from localllm.models import commands as model_commands
from localllm.service.logs import configure_logging

_ENGINE = EngineConfig()
_SERVER = ServerConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="localllm", description="Offline-first OpenAI-compatible LLM server.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API",
        description="Every flag also reads from the config file and from LOCALLLM_<FLAG> environment variables "
                    "(flags > environment > config file > defaults).",
    )
    add_config_flags(serve)
    config = sub.add_parser("config", help="show the effective configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    add_config_flags(config_sub.add_parser(
        "show", help="print the effective configuration (file < environment < flags) as TOML, secrets masked"))
    service = sub.add_parser("service", help="run localllm as a systemd service")
    service_sub = service.add_subparsers(dest="service_command", required=True)
    install = service_sub.add_parser("install", help="write the systemd unit and a default config file",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    install.add_argument("--print", dest="print_only", action="store_true", help="show both; write nothing")
    install.add_argument("--user", help="run as this existing user instead of DynamicUser=yes")
    install.add_argument("--unit-dir", type=Path, default=Path("/etc/systemd/system"))
    install.add_argument("--config-dir", type=Path, default=Path("/etc/localllm"))
    install.add_argument("--api-key-file", dest="api_key_file", type=Path,
                         help="key file handed to the service with LoadCredential= (default: "
                              "CONFIG_DIR/api-keys if it exists; none: no keys)")
    model_commands.add_commands(sub)
    cache_commands.add_commands(sub)
    bench_commands.add_commands(sub)
    lb_commands.add_commands(sub)
    tui = sub.add_parser("tui", help="terminal dashboard, chat and model manager for a running server",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tui.add_argument("--url", default="http://127.0.0.1:8080", help="server to connect to")
    tui.add_argument("--api-key", dest="api_key", help="bearer key, if the server requires one")
    tui.add_argument("--start-server", action="store_true", help="start `localllm serve` on --url's port first")
    return parser


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that override configuration keys (serve, config show)."""
    parser.add_argument("--model", help=f"catalogue name or .gguf path (default {_ENGINE.model})")
    parser.add_argument("--host", help=f"address to listen on (default {_SERVER.host})")
    parser.add_argument("--port", type=int, help=f"port (default {_SERVER.port})")
    parser.add_argument("--parallel", type=int, help=f"slots decoded together (default {_ENGINE.parallel})")
    parser.add_argument("--ctx", type=int, help=f"KV cache tokens shared by all slots (default {_ENGINE.ctx})")
    parser.add_argument("--batch", type=int, help=f"most tokens per decode step (default {_ENGINE.batch})")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all usable cores)")
    parser.add_argument("--n-gpu-layers", dest="n_gpu_layers",
                        help="layers to offload to the GPU: a number, -1 for all, or auto (default: auto, "
                             "from the memory plan)")
    parser.add_argument("--max-waiting", dest="max_waiting", type=int,
                        help=f"requests that may queue for a slot before 429 (default {_ENGINE.max_waiting})")
    parser.add_argument("--no-swa-full", dest="swa_full", action="store_false", default=None,
                        help="window-sized KV cache for sliding-window layers: less memory, shorter prefix "
                             "reuse (default: full-size)")
    parser.add_argument("--rpc", help="comma-separated HOST:PORT of llama.cpp rpc-servers to split the model "
                                      "over (default: none; docs/scaling.md)")
    parser.add_argument("--api-key", dest="api_key", help="require this bearer key on /v1 routes (inference scope; "
                                                          "admin keys: admin_api_key or key-file lines name:secret:admin)")
    parser.add_argument("--allowed-hosts", dest="allowed_hosts",
                        help="comma-separated Host names accepted besides localhost, IP addresses and "
                             "(on a non-loopback bind) this machine's host name; '*': any")
    parser.add_argument("--max-keep-alive", dest="max_keep_alive_s", type=float,
                        help="longest keep_alive (seconds) a request may ask for; longer or negative ones are "
                             f"clamped to it (default {_SERVER.max_keep_alive_s:g})")
    parser.add_argument("--max-loaded-models", dest="max_loaded_models", type=int,
                        help="models loaded at once, the default included; one more unloads the least recently "
                             f"used idle one (default {_SERVER.max_loaded_models})")
    parser.add_argument("--drain-timeout", dest="drain_timeout_s", type=float,
                        help=f"seconds SIGTERM waits for in-flight requests (default {_SERVER.drain_timeout_s})")
    parser.add_argument("--data-dir", dest="data_dir", help="models and caches (default: XDG data dir)")
    parser.add_argument("--config", type=Path, help="TOML config file (also LOCALLLM_CONFIG)")
    parser.add_argument("--log-level", dest="log_level", choices=LOG_LEVELS, help="default info")
    parser.add_argument("--log-prompts", dest="log_prompts", action="store_true", default=None,
                        help="debug only: also log request bodies (prompts) at debug level")
    parser.add_argument("--reasoning-format", dest="reasoning_format", choices=REASONING_FORMATS,
                        help="auto: a reasoning model's thinking goes to reasoning_content; none: kept as raw "
                             f"text in content (default {_SERVER.reasoning_format})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in model_commands.COMMANDS:
        return model_commands.run(args)
    if args.command in cache_commands.COMMANDS:
        return cache_commands.run(args)
    if args.command in bench_commands.COMMANDS:
        return bench_commands.run(args)
    if args.command in lb_commands.COMMANDS:
        return lb_commands.run(args)
    if args.command == "tui":
        return run_tui(args)
    if args.command == "service":
        from localllm.service.commands import service_install

        return service_install(args)
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config", "config_command")}
    try:
        config = Config.load(args.config, overrides)
    except ConfigError as exc:
        print(f"localllm: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        from localllm.service.commands import config_show

        return config_show(config, args.config, overrides)
    if args.command == "serve":
        configure_logging(config.server.log_level)
        return serve(config)
    return 1


def serve(config: Config) -> int:
    from localllm.server.run import serve as run_server  # imports aiohttp and llama.cpp: only when serving

    return run_server(config)


def run_tui(args: argparse.Namespace) -> int:
    from tui.launcher import run_tui as launch  # Textual loads only for the TUI; the TUI speaks HTTP only

    return launch(args.url, args.api_key, args.start_server)


if __name__ == "__main__":
    sys.exit(main())
