"""KV prefix states on disk (diskcache), so a long shared prefix (a system prompt, a
few-shot preamble) is evaluated once and survives restarts.

Entries are keyed by model identity + context format + tenant namespace (one API key's
prefixes never serve another's, see server/tenants.py) + the exact token prefix. An
in-memory index of the stored prefixes answers "longest stored prefix of this
prompt" without touching the disk; it is re-read from disk when another process
may have added entries. Writes happen on a background thread.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import diskcache

from localllm.engine.prefix import common_prefix_len

log = logging.getLogger(__name__)
INDEX_REFRESH_S = 5.0
_TENANT_TAG = "#tenant="
"""Joins the model namespace and a tenant namespace in an entry's tag."""


@dataclass(frozen=True, slots=True)
class KvStoreConfig:
    directory: Path
    namespace: str
    """Model identity and context format: states of other models or layouts never match."""
    min_tokens: int = 512
    """Only prompts at least this long are saved (and only such prefixes restored)."""
    size_limit_bytes: int = 2 * 2**30


class KvPrefixStore:
    """Implements the engine's PrefixStateStore contract (engine/contracts.py)."""

    def __init__(self, config: KvStoreConfig) -> None:
        self.config = config
        self.min_tokens = config.min_tokens
        self.num_saved = self.num_restored = self.num_errors = 0
        self.error: str | None = None
        self._index: dict[str, tuple[str, list[int]]] = {}
        """entry key -> (tenant namespace, token ids)"""
        self._index_read_s = 0.0
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-store-writer")
        try:
            self._cache: diskcache.Cache | None = diskcache.Cache(
                str(config.directory), size_limit=config.size_limit_bytes, eviction_policy="least-recently-used")
            self._refresh_index()
        except Exception as exc:
            self._cache = None
            self._fail("open", exc)

    def longest(self, prompt_ids: list[int], namespace: str = "") -> tuple[str, int] | None:
        """(entry key, tokens shared with the prompt) of the best stored prefix of `namespace`, if any."""
        if self._cache is None:
            return None
        if time.monotonic() - self._index_read_s > INDEX_REFRESH_S:
            self._refresh_index()
        best: tuple[str, int] | None = None
        with self._lock:
            for key, (owner, token_ids) in self._index.items():
                if owner != namespace:
                    continue
                shared = common_prefix_len(token_ids, prompt_ids)
                if shared >= self.min_tokens and (best is None or shared > best[1]):
                    best = (key, shared)
        return best

    def load(self, key: str) -> bytes | None:
        if self._cache is None:
            return None
        try:
            data = self._cache.get(("state", key))
        except Exception as exc:
            self._fail("read", exc)
            return None
        if data is None:  # evicted, or cleared by another process
            with self._lock:
                self._index.pop(key, None)
            return None
        self.num_restored += 1
        return data

    def covers(self, prompt_ids: list[int], namespace: str = "") -> bool:
        """True if a stored prefix already covers most of this prompt (saving it again adds little)."""
        best = self.longest(prompt_ids, namespace)
        return best is not None and best[1] >= 0.9 * len(prompt_ids)

    def save(self, token_ids: list[int], data: bytes, namespace: str = "") -> None:
        """Queues a write; returns at once (the engine thread must not wait for the disk)."""
        if self._cache is None:
            return
        key = self._key(token_ids, namespace)
        with self._lock:
            self._index[key] = (namespace, list(token_ids))
        self._writer.submit(self._write, key, tuple(token_ids), data, namespace)

    def _write(self, key: str, token_ids: tuple[int, ...], data: bytes, namespace: str) -> None:
        try:
            assert self._cache is not None
            tag = self.config.namespace + (_TENANT_TAG + namespace if namespace else "")
            self._cache.set(("state", key), data)
            self._cache.set(("tokens", key), token_ids, tag=tag)
            self.num_saved += 1
        except Exception as exc:  # disk full, ...
            with self._lock:
                self._index.pop(key, None)
            self._fail("write", exc)

    def _refresh_index(self) -> None:
        assert self._cache is not None
        index = {}
        for cache_key in list(self._cache.iterkeys()):
            if isinstance(cache_key, tuple) and cache_key[0] == "tokens":
                entry = self._cache.get(cache_key, tag=True)
                owner = _tenant(entry[1], self.config.namespace) if entry and entry[0] is not None else None
                if owner is not None:
                    index[cache_key[1]] = (owner, list(entry[0]))  # lists: prefix compares are list slices
        with self._lock:
            self._index = index
            self._index_read_s = time.monotonic()

    def _key(self, token_ids: list[int], namespace: str) -> str:
        digest = hashlib.sha256(self.config.namespace.encode())
        if namespace:
            digest.update(f"{_TENANT_TAG}{namespace}|".encode())
        digest.update(b"".join(t.to_bytes(4, "little") for t in token_ids))
        return digest.hexdigest()

    def flush(self) -> None:
        """Waits for queued writes (shutdown, tests)."""
        self._writer.submit(lambda: None).result()

    def stats(self) -> dict:
        return {"active": self._cache is not None, "error": self.error, "entries": len(self._index),
                "saved": self.num_saved, "restored": self.num_restored, "errors": self.num_errors}

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        if self._cache is not None:
            self._cache.close()

    def _fail(self, action: str, exc: Exception) -> None:
        self.num_errors += 1
        self.error = f"{action} failed: {type(exc).__name__}: {exc}"
        log.warning("KV prefix store at %s: %s", self.config.directory, self.error)


def _tenant(tag: object, model_namespace: str) -> str | None:
    """The tenant namespace of an entry tagged `tag`, or None if it is another model's."""
    if tag == model_namespace:
        return ""
    prefix = model_namespace + _TENANT_TAG
    return tag[len(prefix):] if isinstance(tag, str) and tag.startswith(prefix) else None
