"""`localllm config show` and `localllm service install`: messages, never tracebacks."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from localllm.config import SECRET_KEYS, Config, ConfigError, config_layers
from localllm.service.unit import UnitSpec, detect_gpu, home_warning, install, render_default_config, render_unit

MASK = "********"
_SOURCE_NAMES = {"file": "config file", "environment": "environment", "flags": "flag"}


def config_show(config: Config, config_file: Path | None, overrides: dict[str, Any]) -> int:
    """Prints the effective configuration as TOML; each key says which source set it."""
    try:
        layers = config_layers(config_file, overrides)
    except ConfigError as exc:  # cannot happen after a successful load; kept for safety
        print(f"localllm: invalid configuration: {exc}", file=sys.stderr)
        return 2
    print(render_config(config, layers))
    return 0


def render_config(config: Config, layers: dict[str, dict[str, Any]]) -> str:
    """TOML with flat keys (loadable again by Config.load); secrets masked; unset keys commented."""
    lines = ["# effective localllm configuration (defaults < config file < environment < flags)"]
    for key, value in config.to_flat().items():
        source = next((_SOURCE_NAMES[name] for name in ("flags", "environment", "file") if key in layers[name]),
                      "default")
        if value is None:
            lines.append(f"# {key} is unset ({source})")
            continue
        shown = MASK if key in SECRET_KEYS else value
        lines.append(f"{key} = {toml_value(shown)}  # {source}")
    return "\n".join(lines)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def service_install(args: argparse.Namespace) -> int:
    """Writes (or with --print shows) the unit and the default config; exit 1 when it cannot write."""
    devices, groups = detect_gpu()
    key_file = args.api_key_file
    if key_file is None and (args.config_dir / "api-keys").is_file():
        key_file = args.config_dir / "api-keys"
    spec = UnitSpec(config_path=args.config_dir / "config.toml", user=args.user,
                    gpu_devices=devices, gpu_groups=groups, api_key_file=key_file)
    try:
        render_unit(spec)  # a path a unit file cannot hold (a newline) is refused before anything is written
    except ConfigError as exc:
        print(f"localllm: cannot install the service: {exc}", file=sys.stderr)
        return 2
    warning = home_warning(spec.python)
    if warning:
        print(f"localllm: {warning}", file=sys.stderr)
    if args.print_only:
        print(f"# {args.unit_dir / 'localllm.service'}\n{render_unit(spec)}")
        print(f"# {spec.config_path} (written only where none exists)\n{render_default_config()}")
        return 0
    try:
        result = install(spec, args.unit_dir)
    except OSError as exc:
        print(f"localllm: cannot install the service: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {result.unit_path}")
    print(f"wrote {result.config_path}" if result.config_written
          else f"kept the existing {result.config_path}")
    print("next: systemctl daemon-reload && systemctl enable --now localllm")
    return 0
