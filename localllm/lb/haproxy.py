"""An HAProxy configuration that balances OpenAI requests over several localllm replicas.

What each part is for (the generated file repeats this in comments):

- `balance leastconn`: a completion holds its connection for its whole length, so the
  replica with the fewest open requests is the least busy one.
- `option httpchk GET /ready` + `http-check expect status 200`: /ready answers 503 while a
  replica loads its model or its engine loop stalls, and refuses connections once SIGTERM
  made it drain; `fall` failed checks take it out, `rise` good ones put it back.
- Streams pass through as they come: HAProxy never buffers responses, `http-buffer-request`
  stays off, `option http-no-delay` sends each SSE chunk at once, and `timeout server` is
  long because a non-streamed completion says nothing until it is done.
- `retry-on conn-failure empty-response 503` with `retries` and `option redispatch 1`: a
  request that reaches a replica which has stopped accepting (draining) or is not ready goes
  to another one; the client never sees that. Only requests that fit HAProxy's buffer (16 kB
  by default, `tune.bufsize`) can be replayed; larger ones fail over on connection errors only.
- 429 (queue full, rate limit) is answered with `Retry-After` and passes through unchanged,
  as does the last 503 when no replica is ready.
- No `on-marked-down shutdown-sessions`: a replica leaving the pool keeps its streams.
"""
from __future__ import annotations

from dataclasses import dataclass

API_KEY_HEADER_MODES = ("passthrough", "strip")


class LbConfigError(ValueError):
    """An invalid replica address or option; the message names it."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    """IPv4 address or name; IPv6 without brackets."""
    port: int

    @classmethod
    def parse(cls, text: str, what: str = "replica") -> Endpoint:
        """`HOST:PORT`, `[IPv6]:PORT` or `:PORT` (all addresses, for binds)."""
        host, sep, port = text.strip().rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise LbConfigError(f"{what} {text!r} must be HOST:PORT with a port from 1 to 65535")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise LbConfigError(f"{what} {text!r}: write IPv6 addresses as [ADDRESS]:PORT")
        if what == "replica" and not host:
            raise LbConfigError(f"replica {text!r} needs a host")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class LbConfig:
    replicas: tuple[Endpoint, ...]
    """localllm servers, each `localllm serve --host ... --port ...`."""
    bind: Endpoint = Endpoint("127.0.0.1", 8000)
    """Where HAProxy listens for clients."""
    api_key_header: str = "passthrough"
    """passthrough: clients' `Authorization` reaches the replicas, which check it (give them all
    the same --api-key or key file); strip: removed, for replicas that run without keys."""
    check_interval_ms: int = 1000
    """Health check period while a replica is up."""
    fall: int = 2
    """Failed checks that take a replica out (fall x interval: about 1 s with fastinter)."""
    rise: int = 2
    """Passed checks that put it back."""
    timeout_server_s: int = 600
    """Longest silence from a replica inside one response (a long non-streamed completion)."""
    retries: int = 3
    """Extra attempts for a request that could not be delivered; each goes to another replica."""

    def __post_init__(self) -> None:
        if not self.replicas:
            raise LbConfigError("at least one --replica HOST:PORT is needed")
        if len(set(self.replicas)) != len(self.replicas):
            raise LbConfigError("a replica is listed twice")
        if self.api_key_header not in API_KEY_HEADER_MODES:
            raise LbConfigError(f"api_key_header must be one of {', '.join(API_KEY_HEADER_MODES)}")
        for name in ("check_interval_ms", "fall", "rise", "timeout_server_s"):
            if getattr(self, name) < 1:
                raise LbConfigError(f"{name} must be at least 1")
        if self.retries < 0:
            raise LbConfigError("retries must be 0 or more")


def render(config: LbConfig) -> str:
    """The haproxy.cfg text for `config` (HAProxy 2.4 or newer)."""
    interval = config.check_interval_ms
    servers = "\n".join(f"    server replica{i} {endpoint} check" for i, endpoint in enumerate(config.replicas, 1))
    auth = ("    # Clients' Authorization header goes to the replicas unchanged; they check the key.\n"
            if config.api_key_header == "passthrough" else
            "    # Replicas run without keys: the Authorization header is not forwarded.\n"
            "    http-request del-header Authorization\n")
    return f"""\
# haproxy.cfg for localllm replicas, written by `localllm lb config`.
# Run: haproxy -f haproxy.cfg   (check it first with: haproxy -c -f haproxy.cfg)
# Each replica: localllm serve --host ADDRESS --port PORT (same models and keys on all).

global
    maxconn 4096

defaults
    mode http
    option forwardfor                 # replicas see the client address in X-Forwarded-For
    option http-server-close          # one request per replica connection: a draining replica
                                      # refuses the next one, and that one is retried elsewhere
    option http-no-delay              # SSE chunks go out as they arrive, no coalescing
    timeout connect 2s
    timeout client {config.timeout_server_s}s
    timeout server {config.timeout_server_s}s  # a non-streamed completion is silent until done
    timeout http-request 30s
    timeout queue 30s

frontend localllm
    bind {config.bind}
    default_backend localllm_replicas

backend localllm_replicas
    balance leastconn                 # fewest open requests: completions hold their connection
    option httpchk GET /ready         # 503 while loading or stalled; refused while draining
    http-check expect status 200
    # A request whose replica refused the connection, closed it without answering (draining)
    # or answered 503 (loading) is replayed on another replica; 429 and Retry-After pass through.
    retry-on conn-failure empty-response 503
    retries {config.retries}
    option redispatch 1
{auth}\
    http-response set-header X-Localllm-Replica %[srv_name]
    # out after {config.fall} failed checks ({interval // 2} ms apart once one failed), back after {config.rise} good ones.
    # No on-marked-down shutdown-sessions: streams on a replica that leaves the pool finish.
    default-server inter {interval}ms fastinter {max(interval // 2, 100)}ms downinter {interval}ms fall {config.fall} rise {config.rise}
{servers}
"""
