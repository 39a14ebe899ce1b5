"""Cache namespaces: with several keys, one key's cached answers and cached prompt prefixes
are invisible to another (no replayed answers, no `cached_tokens` oracle), unless the
operator shares them (`share_cache_across_keys`). A request's `cache_salt` (vLLM's idea)
narrows its namespace further. Without keys everything is shared: one user, one cache.
"""
from __future__ import annotations

import hashlib
import json

from aiohttp import web

from localllm.server.auth import KEY_ID, KEYRING_KEY
from localllm.server.errors import bad_request
from localllm.server.state import CONFIG_KEY

MAX_CACHE_SALT_CHARS = 256
SHARED = ""
"""The namespace of everything shared (single-user mode, or sharing switched on)."""


def cache_namespace(request: web.Request, body: dict) -> str:
    """The request's namespace: SHARED, or a digest of (key name, cache_salt)."""
    salt = body.get("cache_salt")
    if salt is not None and (not isinstance(salt, str) or not salt or len(salt) > MAX_CACHE_SALT_CHARS):
        raise bad_request(f"cache_salt must be a non-empty string of at most {MAX_CACHE_SALT_CHARS} characters",
                          "cache_salt")
    owner = ""
    if request.app[KEYRING_KEY].enabled and not request.app[CONFIG_KEY].server.share_cache_across_keys:
        owner = request.get(KEY_ID, "")
    if not owner and salt is None:
        return SHARED
    return hashlib.sha256(json.dumps([owner, salt]).encode()).hexdigest()[:32]


def owner(request: web.Request) -> str:
    """Who owns what a request stores (Responses kept for previous_response_id): the key's name
    while keys are configured, else SHARED. Not a cache: share_cache_across_keys does not share it."""
    return request.get(KEY_ID, "") if request.app[KEYRING_KEY].enabled else SHARED
