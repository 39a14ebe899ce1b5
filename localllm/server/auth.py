"""API keys with scopes (inference, admin), per-key limits (rate_limits.py) and per-key usage.

Auth fails closed: once a key source is configured (api_key, admin_api_key, api_key_file)
the server needs a key on /v1, /api (Ollama's) and /admin, and a source that yields no key is an error,
never "no auth". Without any key source (single user on loopback), admin routes answer
only to loopback peers.
"""
from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from localllm.config import ConfigError, ServerConfig
from localllm.server.errors import PROTOCOL, ApiError, protocol_of
from localllm.server.rate_limits import RateLimiter, Ticket, completion_budget
from localllm.server.state import CONFIG_KEY

KEY_ID = web.RequestKey("key_id", str)
"""Which key made the request (its name: for limits, usage, logs and cache namespaces)."""
IS_ADMIN = web.RequestKey("is_admin", bool)
"""The request may see admin data (an admin key, or no keys configured)."""
RATE_HEADERS = web.RequestKey("rate_headers", dict)
"""x-ratelimit-* headers, for responses that send their headers early (SSE)."""
USAGE_TOKENS = web.RequestKey("usage_tokens", int)
"""Tokens the request used, set by the generation and embedding handlers."""
TICKET = web.RequestKey("rate_ticket", Ticket)
"""The request's hold on its key's token budget (POSTs only)."""

SCOPES = ("inference", "admin")
ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    """Shown in logs, metrics and /v1/stats; never derived from the secret."""
    secret: str
    is_admin: bool = False


def keys_configured(config: ServerConfig) -> bool:
    """Any key source set (api_key, admin_api_key, api_key_file): auth is on."""
    return bool(config.api_key or config.admin_api_key or config.api_key_file)


class KeyRing:
    """The accepted keys (flag, environment, key file) and the per-key limits."""

    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        self.limits = RateLimiter(config.rate_limit_rpm, config.rate_limit_tpm)
        self._keys: list[ApiKey] = []
        self.reload()

    @property
    def enabled(self) -> bool:
        """True once any key source is configured: requests then need a valid key."""
        return keys_configured(self._config)

    @property
    def metrics_require_key(self) -> bool:
        return self._config.metrics_require_key

    def reload(self) -> None:
        """Re-reads the key file (SIGHUP); keys removed from it stop working at once.

        Raises ConfigError (a ValueError) and keeps the old keys when the sources yield no
        key or a line is invalid: a half-written key file must not turn auth off."""
        keys = []
        if self._config.api_key:
            keys.append(ApiKey("default", self._config.api_key))
        if self._config.admin_api_key:
            keys.append(ApiKey("admin", self._config.admin_api_key, is_admin=True))
        if self._config.api_key_file:
            from_file = read_key_file(Path(self._config.api_key_file))
            if not from_file:  # each configured source must yield keys, even beside api_key
                raise ConfigError(f"api_key_file {self._config.api_key_file} holds no key (empty or only "
                                  "comments); refusing to start with it")
            keys.extend(from_file)
        _refuse_duplicates(keys)
        self._keys = keys

    def identify(self, authorization: str) -> ApiKey | None:
        """The key for an `Authorization: Bearer ...` header, or None. Constant-time compare."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.match(token)

    def match(self, secret: str) -> ApiKey | None:
        """The key whose secret is `secret` (surrounding spaces ignored), or None. Constant-time compare."""
        given = secret.strip().encode()
        if not given:
            return None
        found = None
        for key in self._keys:
            if hmac.compare_digest(given, key.secret.encode()):
                found = key
        return found

    def snapshot(self) -> dict[str, dict]:
        return self.limits.snapshot()


def _refuse_duplicates(keys: list[ApiKey]) -> None:
    """One secret, one key: with a secret under two names or scopes, which one a request gets
    (its limits, usage, admin rights) would depend on source order."""
    seen: dict[str, str] = {}
    for key in keys:
        if key.secret in seen:
            raise ConfigError(f"the keys {seen[key.secret]!r} and {key.name!r} have the same secret (api_key, "
                              "admin_api_key and the key file must not repeat a secret); refusing it")
        seen[key.secret] = key.name


def read_key_file(path: Path) -> list[ApiKey]:
    """One key per line: `name:secret`, `name:secret:admin` (or `:inference`), or a bare `secret`
    (named key-N by its position, never by anything derived from the secret). Blank lines and
    # comments are skipped. Raises ConfigError naming the line for an empty secret or name."""
    keys = []
    for line_no, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        scope = "inference"
        if not sep:
            name, secret = f"key-{len(keys) + 1}", line
        else:
            head, colon, last = secret.rpartition(":")
            if colon and last.strip() in SCOPES:
                secret, scope = head, last.strip()
        name, secret = name.strip(), secret.strip()
        if not name or not secret:
            raise ConfigError(f"{path}:{line_no}: empty key {'name' if not name else 'secret'} "
                              "(expected name:secret[:admin])")
        keys.append(ApiKey(name, secret, is_admin=scope == "admin"))
    return keys


def is_loopback_peer(request: web.Request) -> bool:
    try:
        address = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


KEYRING_KEY = web.AppKey("keyring", KeyRing)
KEYED_PREFIXES = ("/v1/", "/api/", "/admin/")
OPEN_PATHS = frozenset({"/api/version"})
"""Answer without a key, like /health: Ollama clients probe them to find the server; they reveal nothing."""
ADMIN_API_PATHS = frozenset({"/api/pull", "/api/delete", "/api/create", "/api/copy", "/api/push"})
"""Ollama's model administration: admin scope, like /admin/models/*."""
_LIMITED_METHODS = {"POST"}  # generation and embeddings; reads like /v1/models are not counted
KEYED_PATHS = frozenset({"/tokenize", "/detokenize", "/apply-template"})
"""llama-server's routes outside /v1/ (misc_routes.py): keyed like /v1/."""


@web.middleware
async def auth_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Keys (Bearer or x-api-key) on /v1/, /api/, /admin/ and KEYED_PATHS (and /metrics if asked), scopes,
    then per-key limits on POSTs."""
    keyring = request.app[KEYRING_KEY]
    path = request.path
    keyed = (path.startswith(KEYED_PREFIXES) and path not in OPEN_PATHS) or path in KEYED_PATHS
    if not (keyed or (path == "/metrics" and keyring.metrics_require_key)):
        return await handler(request)
    key = _authenticate(request, keyring)
    request[KEY_ID] = key.name if key else ANONYMOUS
    request[IS_ADMIN] = key.is_admin if key else True
    if request.method not in _LIMITED_METHODS:
        request[RATE_HEADERS] = {}
        return await handler(request)
    ticket, headers = keyring.limits.admit(request[KEY_ID])
    request[TICKET], request[RATE_HEADERS] = ticket, headers
    try:
        response = await handler(request)
    finally:
        keyring.limits.settle(ticket, request.get(USAGE_TOKENS, 0), request.get(PROTOCOL) or protocol_of(path))
    if not response.prepared:  # streamed responses sent their headers already
        response.headers.update(request[RATE_HEADERS])
    return response


def needs_admin(request: web.Request) -> bool:
    """/admin/*, Ollama's pull/delete, and /v1/plan while rpc_servers is set: planning then connects
    to the RPC peers."""
    if request.path.startswith("/admin/") or request.path in ADMIN_API_PATHS:
        return True
    return request.path == "/v1/plan" and bool(request.app[CONFIG_KEY].engine.rpc_servers)


def _authenticate(request: web.Request, keyring: KeyRing) -> ApiKey | None:
    """The request's key (None without keys configured); 401 / 403 when it may not pass."""
    admin_route = needs_admin(request)
    if not keyring.enabled:
        if admin_route and not is_loopback_peer(request):
            raise ApiError(403, "Admin routes answer only on loopback while no API keys are configured.",
                           type="permission_error", code="admin_loopback_only")
        return None
    key = _presented_key(request, keyring)
    if key is None:
        raise ApiError(401, "Incorrect or missing API key. Send 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                       type="authentication_error", code="invalid_api_key")
    if admin_route and not key.is_admin:
        raise ApiError(403, f"The key {key.name!r} has no admin scope; {request.path} needs admin_api_key or "
                       "a `name:secret:admin` line in the key file.", type="permission_error",
                       code="insufficient_scope")
    return key


def _presented_key(request: web.Request, keyring: KeyRing) -> ApiKey | None:
    """The key the request names by `Authorization: Bearer` or `x-api-key` (Anthropic's clients send
    that one, on any route). Every such header, repeated ones too, must name the same key: one wrong
    credential is never outvoted by a right one."""
    found = [keyring.identify(value) for value in request.headers.getall("Authorization", ())]
    found += [keyring.match(value) for value in request.headers.getall("x-api-key", ())]
    if not found or any(key is None or key is not found[0] for key in found):
        return None
    return found[0]


def reserve_tokens(request: web.Request, prompt_lens: list[int], n: int, max_tokens: int | None,
                   slot_ctx: int) -> None:
    """Reserves prompt + completion budget for every choice on the request's key (429 when it does
    not fit); the middleware settles the real count when the request ends."""
    _reserve(request, sum(p + n * completion_budget(p, max_tokens, slot_ctx) for p in prompt_lens))


def reserve_embedding_tokens(request: web.Request, num_tokens: int) -> None:
    """Reserves an embedding call's input tokens on the request's key (429 when they do not fit).
    Runs on the embedding worker while the handler awaits it, so nothing else touches `request`."""
    _reserve(request, num_tokens, what="the inputs", advice="send fewer inputs or retry later")


def _reserve(request: web.Request, num_tokens: int, **wording: str) -> None:
    """Holds `num_tokens` on the request's ticket when a token limit is set; merges the
    updated x-ratelimit-* headers into RATE_HEADERS."""
    ticket = request.get(TICKET)
    limits = request.app[KEYRING_KEY].limits
    if ticket is None or not limits.tpm:
        return
    headers = limits.reserve(ticket, num_tokens, **wording)
    request[RATE_HEADERS] = {**request.get(RATE_HEADERS, {}), **headers}
