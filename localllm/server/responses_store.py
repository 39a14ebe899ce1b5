"""Stored /v1/responses answers (diskcache), so a later request can continue a conversation with
`previous_response_id` and GET or DELETE it by id.

Each entry is one turn: the Response, the items that turn added (its input and its output) and
its predecessor's id; a follow-up rebuilds the conversation by walking that chain back (at most
MAX_CHAIN_TURNS entries, MAX_CHAT_MESSAGES items and max_entry_bytes), so storing a turn writes
that turn only, however long the conversation. A link missing in the middle (expired, evicted,
deleted) makes the whole chain unknown: never a silently shortened conversation.

Bounded on disk (responses_store_size_mib, least recently stored evicted first), in time
(responses_store_ttl_s) and per owner (responses_store_max_per_key: an owner at its bound loses
its own oldest entry, not another's). Each entry lives under its owner's namespace
(tenants.owner): another key's id reads as unknown. Values are JSON behind a sealed header
(cache/sealed.py): nothing read from the directory is unpickled, and an entry moved under another
key is refused. Every failure of the store is logged and survived: responses are then not stored
(a follow-up gets a 404).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from localllm.cache.sealed import SealError, open_cache, seal, unseal
from localllm.chat.messages import MAX_CHAT_MESSAGES
from localllm.config import Config

log = logging.getLogger(__name__)
KIND = b"RSTO"
MAX_ENTRY_BYTES = 64 * 2**20
"""One stored turn, and a whole rebuilt conversation: a larger turn is not stored (its follow-up
gets a 404 saying so), a larger conversation cannot be continued (400)."""
MAX_CHAIN_TURNS = 1024
"""Stored responses one follow-up may walk back through (every turn adds at least its output)."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    response: dict
    """The Response object as the client got it."""
    items: list[dict]
    """What this turn added to the conversation: its input items, then its output items."""
    previous_id: str | None = None
    """The response this one continued (its previous_response_id), or None: the chain's start."""


class ConversationTooLong(ValueError):
    """A chain past MAX_CHAIN_TURNS, MAX_CHAT_MESSAGES items or max_entry_bytes."""


class ResponseStore:
    """Thread-safe (SQLite underneath). Blocking: call from a worker thread, not the event loop."""

    def __init__(self, directory: Path, size_limit_bytes: int, ttl_s: float, max_per_owner: int = 0) -> None:
        self.directory, self.ttl_s, self.max_per_owner = directory, ttl_s, max_per_owner
        self.max_entry_bytes = min(MAX_ENTRY_BYTES, size_limit_bytes // 4)
        self._cache = None
        if size_limit_bytes > 0:
            try:
                self._cache = open_cache(str(directory), size_limit=size_limit_bytes, tag_index=True,
                                         eviction_policy="least-recently-stored")
            except Exception as exc:  # unwritable, corrupt database, not a directory, ...
                log.warning("response store at %s cannot be opened (%s: %s); responses are not stored",
                            directory, type(exc).__name__, exc)

    @property
    def is_active(self) -> bool:
        return self._cache is not None

    def put(self, owner: str, stored: StoredResponse) -> bool:
        """Stores (changes state) one turn under `owner`, first dropping `owner`'s oldest entries
        past its bound; False when off, too large or failing."""
        if self._cache is None:
            return False
        key = _key(owner, stored.response["id"])
        payload = json.dumps({"response": stored.response, "items": stored.items, "previous": stored.previous_id},
                             ensure_ascii=False).encode()
        if len(payload) > self.max_entry_bytes:
            log.info("response %s not stored: %d bytes, more than %d", stored.response["id"], len(payload),
                     self.max_entry_bytes)
            return False
        tag = _owner_tag(owner)
        try:
            with self._cache.transact(retry=True):  # two puts of one owner cannot both pass its bound
                self._make_room(tag)
                self._cache.set(key, seal(KIND, key, payload), expire=self.ttl_s, tag=tag)
        except Exception as exc:  # disk full, permissions changed under us, ...
            log.warning("response store: write failed: %s: %s", type(exc).__name__, exc)
            return False
        return True

    def _make_room(self, tag: str) -> None:
        """Deletes the owner's live entries but its newest max_per_owner - 1 (inside a transaction).
        diskcache has no per-tag query of its own: its SQL table (key, tag, store_time, expire_time)."""
        if self.max_per_owner <= 0:
            return
        rows = self._cache._sql(
            "SELECT key FROM Cache WHERE tag = ? AND (expire_time IS NULL OR expire_time > ?)"
            " ORDER BY store_time DESC, rowid DESC LIMIT -1 OFFSET ?",
            (tag, time.time(), self.max_per_owner - 1)).fetchall()
        for (old_key,) in rows:
            self._cache.delete(old_key)

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
            stored = StoredResponse(value["response"], value["items"], value["previous"])
        except SealError as exc:
            log.warning("response store: ignoring entry for %s: %s", response_id[:80], exc)
            return None
        except Exception as exc:  # a database error, or JSON of another shape (an older entry)
            log.warning("response store: read failed: %s: %s", type(exc).__name__, exc)
            return None
        if not (isinstance(stored.response, dict) and isinstance(stored.items, list)
                and all(isinstance(item, dict) for item in stored.items)
                and (stored.previous_id is None or isinstance(stored.previous_id, str))):
            return None
        return stored

    def conversation(self, owner: str, response_id: str) -> list[dict] | None:
        """Every item up to and including `owner`'s response `response_id` (each earlier turn's
        input and output), or None when it or any response before it is unknown, expired or
        unreadable. Raises ConversationTooLong past the chain's bounds."""
        turns: list[list[dict]] = []
        keys: list[str] = []
        num_items = num_bytes = 0
        next_id: str | None = response_id
        while next_id is not None:
            if len(turns) == MAX_CHAIN_TURNS:
                raise ConversationTooLong(f"the conversation is more than {MAX_CHAIN_TURNS} responses long")
            stored = self.get(owner, next_id)
            if stored is None:
                return None
            num_items += len(stored.items)
            num_bytes += len(json.dumps(stored.items, ensure_ascii=False))
            if num_items > MAX_CHAT_MESSAGES or num_bytes > self.max_entry_bytes:
                raise ConversationTooLong(f"the conversation has more than {MAX_CHAT_MESSAGES} items or "
                                          f"{self.max_entry_bytes} bytes")
            turns.append(stored.items)
            keys.append(_key(owner, next_id))
            next_id = stored.previous_id
        self._renew(keys)
        return [item for items in reversed(turns) for item in items]

    def _renew(self, keys: list[str]) -> None:
        """Gives a conversation in use a full TTL again (changes state: expiry times only), so a
        live conversation does not lose its first turns while its last ones are fresh."""
        try:
            for key in keys:
                self._cache.touch(key, expire=self.ttl_s)
        except Exception as exc:  # the entries stay readable until their old expiry
            log.warning("response store: renewing failed: %s: %s", type(exc).__name__, exc)

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


def _owner_tag(owner: str) -> str:
    """The tag that counts an owner's entries (a digest: no key name in the database)."""
    return hashlib.sha256(json.dumps(["owner", owner]).encode()).hexdigest()


RESPONSE_STORE_KEY = web.AppKey("response_store", ResponseStore)


def setup_store(app: web.Application, config: Config) -> None:
    """Opens the store under cache_dir/responses-store; closed with the app."""
    server = config.server
    app[RESPONSE_STORE_KEY] = ResponseStore(config.cache_dir / "responses-store",
                                            server.responses_store_size_mib * 2**20, server.responses_store_ttl_s,
                                            server.responses_store_max_per_key)

    async def close(app: web.Application) -> None:
        app[RESPONSE_STORE_KEY].close()

    app.on_cleanup.append(close)
