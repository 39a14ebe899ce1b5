"""Stored /v1/responses answers (diskcache), so a later request can continue a conversation with
`previous_response_id` and GET or DELETE it by id.

Bounded on disk (responses_store_size_mib, least recently stored evicted first) and in time
(responses_store_ttl_s). Each entry lives under its owner's namespace (tenants.owner): another
key's id reads as unknown. Values are JSON behind a sealed header (cache/sealed.py): nothing read
from the directory is unpickled, and an entry moved under another key is refused. Every failure
of the store is logged and survived: responses are then not stored (a follow-up gets a 404).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from localllm.cache.sealed import SealError, open_cache, seal, unseal
from localllm.config import Config

log = logging.getLogger(__name__)
KIND = b"RSTO"
MAX_ENTRY_BYTES = 64 * 2**20
"""One stored conversation; a longer one is not stored (its follow-up gets a 404 saying so)."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    response: dict
    """The Response object as the client got it."""
    conversation: list[dict]
    """Every item so far (earlier turns, this request's input, this response's output): what a
    follow-up continues from."""


class ResponseStore:
    """Thread-safe (SQLite underneath). Blocking: call from a worker thread, not the event loop."""

    def __init__(self, directory: Path, size_limit_bytes: int, ttl_s: float) -> None:
        self.directory, self.ttl_s = directory, ttl_s
        self.max_entry_bytes = min(MAX_ENTRY_BYTES, size_limit_bytes // 4)
        self._cache = None
        if size_limit_bytes > 0:
            try:
                self._cache = open_cache(str(directory), size_limit=size_limit_bytes,
                                         eviction_policy="least-recently-stored")
            except Exception as exc:  # unwritable, corrupt database, not a directory, ...
                log.warning("response store at %s cannot be opened (%s: %s); responses are not stored",
                            directory, type(exc).__name__, exc)

    @property
    def is_active(self) -> bool:
        return self._cache is not None

    def put(self, owner: str, stored: StoredResponse) -> bool:
        """Stores (changes state) one response under `owner`; False when off, too large or failing."""
        if self._cache is None:
            return False
        key = _key(owner, stored.response["id"])
        payload = json.dumps({"response": stored.response, "conversation": stored.conversation},
                             ensure_ascii=False).encode()
        if len(payload) > self.max_entry_bytes:
            log.info("response %s not stored: %d bytes, more than %d", stored.response["id"], len(payload),
                     self.max_entry_bytes)
            return False
        try:
            self._cache.set(key, seal(KIND, key, payload), expire=self.ttl_s)
        except Exception as exc:  # disk full, permissions changed under us, ...
            log.warning("response store: write failed: %s: %s", type(exc).__name__, exc)
            return False
        return True

    def get(self, owner: str, response_id: str) -> StoredResponse | None:
        """`owner`'s response, or None: unknown, expired, another owner's, or unreadable."""
        if self._cache is None:
            return None
        key = _key(owner, response_id)
        try:
            raw = self._cache.get(key)
            if raw is None:
                return None
            value = json.loads(unseal(raw, KIND, key, self.max_entry_bytes))
            stored = StoredResponse(value["response"], value["conversation"])
        except SealError as exc:
            log.warning("response store: ignoring entry for %s: %s", response_id[:80], exc)
            return None
        except Exception as exc:  # a database error, or JSON of another shape
            log.warning("response store: read failed: %s: %s", type(exc).__name__, exc)
            return None
        if not (isinstance(stored.response, dict) and isinstance(stored.conversation, list)
                and all(isinstance(item, dict) for item in stored.conversation)):
            return None
        return stored

    def delete(self, owner: str, response_id: str) -> bool:
        """Removes (changes state) `owner`'s response; False when there was none."""
        if self._cache is None:
            return False
        try:
            return bool(self._cache.delete(_key(owner, response_id)))
        except Exception as exc:
            log.warning("response store: delete failed: %s: %s", type(exc).__name__, exc)
            return False

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()


def _key(owner: str, response_id: str) -> str:
    """Owner and id together: one owner can neither read nor delete another's entry."""
    return hashlib.sha256(json.dumps([owner, response_id]).encode()).hexdigest()


RESPONSE_STORE_KEY = web.AppKey("response_store", ResponseStore)


def setup_store(app: web.Application, config: Config) -> None:
    """Opens the store under cache_dir/responses-store; closed with the app."""
    server = config.server
    app[RESPONSE_STORE_KEY] = ResponseStore(config.cache_dir / "responses-store",
                                            server.responses_store_size_mib * 2**20, server.responses_store_ttl_s)

    async def close(app: web.Application) -> None:
        app[RESPONSE_STORE_KEY].close()

    app.on_cleanup.append(close)
