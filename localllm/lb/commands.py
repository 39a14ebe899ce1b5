"""`localllm lb config`: print (or write) an HAProxy configuration for several replicas."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from localllm.lb.haproxy import API_KEY_HEADER_MODES, Endpoint, LbConfig, LbConfigError, render

COMMANDS = {"lb"}


def add_commands(sub: argparse._SubParsersAction) -> None:
    lb = sub.add_parser("lb", help="run several replicas behind HAProxy (docs/scaling.md)")
    actions = lb.add_subparsers(dest="lb_command", required=True)
    config = actions.add_parser("config", help="print an haproxy.cfg that balances over --replica servers",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    config.add_argument("--replica", action="append", required=True, metavar="HOST:PORT",
                        help="a localllm server; repeat for each")
    config.add_argument("--bind", default="127.0.0.1:8000", metavar="HOST:PORT", help="where HAProxy listens")
    config.add_argument("--api-key-header", dest="api_key_header", choices=API_KEY_HEADER_MODES,
                        default="passthrough",
                        help="passthrough: replicas check clients' keys; strip: replicas run without keys")
    config.add_argument("--check-interval-ms", dest="check_interval_ms", type=int, default=1000,
                        help="health check period (/ready)")
    config.add_argument("--timeout-server", dest="timeout_server_s", type=int, default=600,
                        help="seconds a replica may stay silent inside one response")
    config.add_argument("-o", "--output", type=Path, help="write here instead of printing")


def run(args: argparse.Namespace) -> int:
    try:
        config = LbConfig(
            replicas=tuple(Endpoint.parse(text) for text in args.replica),
            bind=Endpoint.parse(args.bind, "bind"),
            api_key_header=args.api_key_header,
            check_interval_ms=args.check_interval_ms,
            timeout_server_s=args.timeout_server_s,
        )
    except LbConfigError as exc:
        print(f"localllm lb: {exc}", file=sys.stderr)
        return 2
    text = render(config)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
        print(f"wrote {args.output}; check it with: haproxy -c -f {args.output}", file=sys.stderr)
    return 0
