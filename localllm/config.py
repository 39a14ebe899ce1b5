"""Frozen configuration; the one place that reads LOCALLLM_* environment variables.

Precedence: defaults < config file (TOML) < environment < command-line flags.
"""
from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "LOCALLLM_"
LOG_LEVELS = ("debug", "info", "warning", "error")
REASONING_FORMATS = ("auto", "none")
SECRET_KEYS = frozenset({"api_key", "admin_api_key"})
"""Keys whose values are masked wherever the configuration is shown."""


def default_data_dir() -> Path:
    """Where models and caches live: $LOCALLLM_DATA_DIR, else XDG data home."""
    explicit = os.environ.get(ENV_PREFIX + "DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "localllm"


def default_cache_dir() -> Path:
    """$LOCALLLM_CACHE_DIR, else XDG cache home."""
    explicit = os.environ.get(ENV_PREFIX + "CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "localllm"


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: str = "gemma3-270m"
    """Catalogue name or path to a .gguf file."""
    parallel: int = 4
    """Slots: requests decoded together."""
    ctx: int = 8192
    """KV cells in all; each slot may use ctx // parallel of them."""
    batch: int = 512
    """Most tokens per llama_decode (decode tokens plus prompt chunks)."""
    threads: int = 0
    """CPU threads; 0 means all cores this process may use."""
    n_gpu_layers: int | None = None
    """Layers offloaded to the GPU; None (`auto`) lets the memory plan pick what fits."""
    vram_budget_mib: int = 0
    """Cap on the VRAM the memory plan may use (0: all that is free); for shared GPUs and tests."""
    max_waiting: int = 64
    """Requests that may wait for a slot; beyond that the server answers 429 at once."""
    swa_full: bool = True
    """Sliding-window layers (Gemma 3, ...) keep a full-context KV cache, so a cached prefix can be
    reused at any length. False: a window-sized cache (Gemma 3 270M, 16k context: 120 MiB less
    RSS), and a prefix is reused only while its last window is still cached."""
    rpc: str = ""
    """Comma-separated HOST:PORT of llama.cpp rpc-servers; the model's layers are split over them
    (needs llama-cpp-python built with -DGGML_RPC=ON; docs/scaling.md). Empty: local devices only."""

    def __post_init__(self) -> None:
        _check(self.parallel >= 1, "parallel", "must be at least 1")
        _check(self.batch >= 1, "batch", "must be at least 1")
        _check(self.ctx >= 64 * self.parallel, "ctx", "must give each slot at least 64 tokens")
        _check(self.threads >= 0, "threads", "must be 0 (auto) or more")
        _check(self.n_gpu_layers is None or self.n_gpu_layers >= -1, "n_gpu_layers", "must be auto, -1 (all) or more")
        _check(self.max_waiting >= 0, "max_waiting", "must be 0 or more")
        endpoints = [e.rpartition(":") for e in self.rpc_servers]
        _check(all(h and p.isdigit() and 0 < int(p) < 65536 for h, _, p in endpoints),
               "rpc", "must be a comma-separated list of HOST:PORT")

    @property
    def rpc_servers(self) -> tuple[str, ...]:
        return tuple(item.strip() for item in self.rpc.split(",") if item.strip())

    @property
    def num_threads(self) -> int:
        return self.threads or default_threads()


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    """When set, every /v1 request needs `Authorization: Bearer <key>` or `x-api-key: <key>` (inference scope)."""
    admin_api_key: str | None = None
    """A key with admin scope: /admin/* routes and every key's usage in /v1/stats (and inference)."""
    api_key_file: str | None = None
    """More keys, one per line (`name:secret`, `name:secret:admin` or `secret`); re-read on SIGHUP.
    A configured key source that yields no key is an error: auth never turns itself off."""
    allowed_hosts: str = ""
    """Comma-separated Host names accepted besides localhost and IP addresses (DNS-rebinding guard;
    on a loopback bind only loopback addresses, elsewhere any, plus this machine's host name); '*' any."""
    share_cache_across_keys: bool = False
    """With several keys, each key's response cache and prefix reuse are its own (no cross-tenant
    oracle); true shares them on purpose. Without keys everything is shared anyway."""
    metrics_require_key: bool = False
    """/metrics needs a valid key too (keys must be configured)."""
    rate_limit_rpm: int = 0
    """Requests per minute per key (0: no limit)."""
    rate_limit_tpm: int = 0
    """Prompt + completion tokens per minute per key (0: no limit)."""
    cors_origins: str = ""
    """Comma-separated origins allowed to call the API from a browser ('*' for any); empty: CORS off."""
    max_body_bytes: int = 4 * 1024 * 1024
    cache_enabled: bool = True
    """Answer exact repeats of deterministic requests from the on-disk response cache."""
    cache_size_mib: int = 512
    cache_ttl_s: float = 7 * 24 * 3600.0
    responses_store_size_mib: int = 256
    """Disk space for stored /v1/responses answers (`store`, the default), which a later request
    continues with `previous_response_id`; each key sees only its own. 0: nothing is stored."""
    responses_store_ttl_s: float = 30 * 24 * 3600.0
    """How long a stored response can be continued or read back (OpenAI keeps them 30 days)."""
    responses_store_max_per_key: int = 1000
    """Stored responses each key (owner) keeps at most: storing one more drops that key's own
    oldest, so one busy key cannot push out the others'. 0: no per-key bound (only the size's)."""
    kv_cache_min_tokens: int = 512
    """Prompts at least this long have their KV state saved to disk for reuse (the prefix states;
    0: off)."""
    kv_cache_size_mib: int = 2048
    """Size limit of the prefix states on disk."""
    keep_alive_s: float = 300.0
    """Idle seconds before a model other than the default is unloaded (-1: never)."""
    max_keep_alive_s: float = 3600.0
    """Longest keep-alive a request's `keep_alive` may ask for; longer ones, and negative ones
    (Ollama's "forever"), are clamped to it, so no request pins a model."""
    max_loaded_models: int = 3
    """Models loaded (or loading) at once, the default included; loading one more unloads the least
    recently used idle one, or answers 429 while all of them serve requests."""
    drain_timeout_s: float = 30.0
    """On SIGTERM/SIGINT: stop accepting, then wait this long for in-flight requests."""
    log_level: str = "info"
    """debug, info, warning or error."""
    log_prompts: bool = False
    """Debug only: also log request bodies (prompts) at debug level. Never on by default."""
    reasoning_format: str = "auto"
    """auto: a reasoning model's thinking (`<think>`...`</think>`) is split off into
    `reasoning_content`; none: kept as raw text in `content` (llama-server's --reasoning-format none)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "log_level", str(self.log_level).lower())
        _check(self.log_level in LOG_LEVELS, "log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        _check(self.reasoning_format in REASONING_FORMATS, "reasoning_format",
               f"must be one of {', '.join(REASONING_FORMATS)}")
        _check(0 <= self.port <= 65535, "port", "must be between 0 and 65535")
        _check(self.rate_limit_rpm >= 0 and self.rate_limit_tpm >= 0, "rate_limit", "limits must be 0 or more")
        _check(self.drain_timeout_s >= 0, "drain_timeout_s", "must be 0 or more")
        _check(math.isfinite(self.keep_alive_s), "keep_alive_s", "must be a number of seconds (-1: never unload)")
        _check(math.isfinite(self.max_keep_alive_s) and self.max_keep_alive_s >= 0, "max_keep_alive_s",
               "must be 0 or more seconds")
        _check(self.max_loaded_models >= 1, "max_loaded_models", "must be at least 1")
        _check(self.responses_store_size_mib >= 0, "responses_store_size_mib", "must be 0 (off) or more")
        _check(self.responses_store_max_per_key >= 0, "responses_store_max_per_key", "must be 0 (no per-key bound) "
               "or more")
        _check(math.isfinite(self.responses_store_ttl_s) and self.responses_store_ttl_s > 0, "responses_store_ttl_s",
               "must be a positive number of seconds")
        for name in ("api_key", "admin_api_key"):
            value = getattr(self, name)
            _check(value is None or value != "", name, "is empty: remove it, or set a key (auth never turns off)")
            _check(value is None or value == value.strip(), name, "has surrounding whitespace, which no "
                   "client sends: remove it")
        _check(not self.metrics_require_key or bool(self.api_key or self.admin_api_key or self.api_key_file),
               "metrics_require_key", "needs api_key, admin_api_key or api_key_file")
        _check(self.api_key_file is None or Path(self.api_key_file).is_file(), "api_key_file",
               f"{self.api_key_file!r} is not a readable file")


@dataclass(frozen=True, slots=True)
class Config:
    engine: EngineConfig = field(default_factory=EngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    data_dir: Path = field(default_factory=default_data_dir)
    cache_dir: Path = field(default_factory=default_cache_dir)
    hf_endpoint: str | None = None
    """Hub (or mirror) base URL for pulls; default: huggingface_hub's (HF_ENDPOINT)."""

    @classmethod
    def load(cls, config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
        """Builds the effective configuration from file, environment and flags."""
        values: dict[str, Any] = {}
        for layer in config_layers(config_file, overrides).values():
            values.update(layer)
        return cls.from_flat(values)

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> Config:
        engine_keys = {f.name for f in fields(EngineConfig)}
        server_keys = {f.name for f in fields(ServerConfig)}
        unknown = set(values) - engine_keys - server_keys - {"data_dir", "hf_endpoint", "cache_dir"}
        if unknown:
            raise ConfigError(f"unknown configuration key(s): {', '.join(sorted(unknown))}")
        engine = _build(EngineConfig, {k: v for k, v in values.items() if k in engine_keys})
        server = _build(ServerConfig, {k: v for k, v in values.items() if k in server_keys})
        data_dir = Path(values["data_dir"]).expanduser() if values.get("data_dir") else default_data_dir()
        hf_endpoint = values.get("hf_endpoint") or os.environ.get("HF_ENDPOINT") or None
        cache_dir = Path(values["cache_dir"]).expanduser() if values.get("cache_dir") else default_cache_dir()
        return cls(engine=engine, server=server, data_dir=data_dir, hf_endpoint=hf_endpoint, cache_dir=cache_dir)

    def to_flat(self) -> dict[str, Any]:
        """The flat keys `from_flat` and the config file accept, in a stable order."""
        flat: dict[str, Any] = {f.name: getattr(self.engine, f.name) for f in fields(EngineConfig)}
        flat.update({f.name: getattr(self.server, f.name) for f in fields(ServerConfig)})
        flat["data_dir"] = str(self.data_dir)
        flat["hf_endpoint"] = self.hf_endpoint
        flat["cache_dir"] = str(self.cache_dir)
        return flat

    def with_engine(self, **changes: Any) -> Config:
        return replace(self, engine=replace(self.engine, **changes))


def config_layers(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The raw flat values each source gives, lowest precedence first: file, environment, flags."""
    file_values: dict[str, Any] = {}
    path = config_file or _env_path("CONFIG")
    if path is not None:
        try:
            file_values = _flatten(tomllib.loads(Path(path).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    return {"file": file_values, "environment": _from_env(), "flags": flags}


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {message}")


def _build(cls: type, values: dict[str, Any]) -> Any:
    typed = {}
    for f in fields(cls):
        if f.name in values:
            typed[f.name] = _coerce(f.name, values[f.name], f.type)
    return cls(**typed)


def _coerce(key: str, value: Any, type_name: Any) -> Any:
    kind = str(type_name)
    if kind == "int | None" and value in (None, "auto"):
        return None
    try:
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind == "bool" and isinstance(value, str):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes", "on")
        if kind.startswith("str") and value is not None:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be {kind}, got {value!r}") from None
    return value


def _flatten(doc: dict[str, Any]) -> dict[str, Any]:
    """Accepts both flat keys and [engine]/[server] tables; '-' and '_' alike."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            flat.update({k.replace("-", "_"): v for k, v in value.items()})
        else:
            flat[key.replace("-", "_")] = value
    return flat


def _env_path(name: str) -> Path | None:
    value = os.environ.get(ENV_PREFIX + name)
    return Path(value) if value else None


def _from_env() -> dict[str, Any]:
    keys = {f.name for f in fields(EngineConfig)} | {f.name for f in fields(ServerConfig)} | {
        "data_dir", "hf_endpoint", "cache_dir"}
    return {k: os.environ[ENV_PREFIX + k.upper()] for k in keys if ENV_PREFIX + k.upper() in os.environ}
