"""What a web page the operator visits may not do to a server on the same machine.

- DNS rebinding: a page on evil.example re-resolves its own name to 127.0.0.1 (or to our
  LAN address) and then reads our answers as same-origin. While we listen on a loopback
  address, the Host header must name a loopback host (localhost, 127.0.0.1, [::1], any
  port) or one of `allowed_hosts`. On any other bind it must be an IP literal (a rebound
  name never is), localhost, this machine's own host name (also as NAME.local), or one of
  `allowed_hosts` ('*': any). Anything else is 403 `host_not_allowed`. Ollama's
  allowedHostsMiddleware also admits every .local/.internal name and private IPs by
  name; we do not, because an attacker can answer mDNS for any .local name on the LAN,
  and a keyless server on 0.0.0.0 would then be open to any page again. Names an
  operator really uses (a reverse proxy, DNS) go in `allowed_hosts`.
- Cross-site requests: a browser sends `Origin` on cross-site fetches and form posts;
  unless the origin is listed in `cors_origins` or is the server's own (same host and
  port as the Host header), the request is refused with 403 before any handler runs.
- Simple (preflight-free) form posts also lack `application/json`; JSON routes refuse
  them with 415 (schemas.read_json).
"""
from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp import web

from localllm.config import ServerConfig
from localllm.server.errors import ApiError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback_address(host: str) -> bool:
    """True for a listen address only this machine can reach."""
    if host.strip("[]").lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(authority: str) -> str:
    """`Host`-style `name[:port]` or `[v6]:port` -> lower-case name without port or brackets."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:authority.find("]")] if "]" in authority else authority
    name, _, _ = authority.partition(":") if authority.count(":") == 1 else (authority, "", "")
    return name


def browser_guard(config: ServerConfig):
    """The middleware for `config`: Host and Origin checks on every request."""
    loopback_bind = is_loopback_address(config.host)
    allowed_hosts = {host_name(h) for h in config.allowed_hosts.split(",") if h.strip()}
    if not loopback_bind:
        allowed_hosts |= own_host_names()
    origins = listed_origins(config.cors_origins)

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if host is not None and not _host_allowed(host, allowed_hosts, any_ip=not loopback_bind):
            raise ApiError(403, _host_message(loopback_bind), type="permission_error", code="host_not_allowed")
        origin = request.headers.get("Origin")
        if origin is not None and not _origin_allowed(origin, host, origins):
            raise ApiError(403, "Cross-origin requests are allowed only from the origins listed in cors_origins.",
                           type="permission_error", code="origin_not_allowed")
        return await handler(request)

    return middleware


def own_host_names() -> set[str]:
    """This machine's host name, also as NAME.local (mDNS), as clients on the LAN type it."""
    name = socket.gethostname().strip().lower().rstrip(".")
    return {name, f"{name}.local"} - {"", ".local"}


def _host_message(loopback_bind: bool) -> str:
    accepted = ("loopback Host names (localhost, 127.0.0.1, [::1])" if loopback_bind
                else "IP addresses, localhost and this machine's host name as Host")
    return f"This server accepts only {accepted}; add other names to allowed_hosts."


def _host_allowed(host: str, allowed_hosts: set[str], *, any_ip: bool) -> bool:
    """`any_ip`: a non-loopback bind, where every IP literal is fine (DNS rebinding needs a name)."""
    name = host_name(host)
    if "*" in allowed_hosts or name in allowed_hosts or name in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return any_ip or address.is_loopback


def listed_origins(cors_origins: str) -> frozenset[str]:
    """`cors_origins` as a set, each without a trailing '/': the guard and the CORS headers share it."""
    return frozenset(o.strip().rstrip("/") for o in cors_origins.split(",") if o.strip())


def is_listed(origin: str, origins: frozenset[str]) -> bool:
    return "*" in origins or origin.strip().rstrip("/") in origins


def _origin_allowed(origin: str, host: str | None, origins: frozenset[str]) -> bool:
    """Listed in cors_origins ('*': any), or same-origin: the page was served by this host:port."""
    origin = origin.strip().rstrip("/")
    if is_listed(origin, origins):
        return True
    if host is None or origin == "null":  # "null": sandboxed frames and file:// pages
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()
