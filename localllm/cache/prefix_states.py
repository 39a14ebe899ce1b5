"""Prefix states: saved KV states on disk (diskcache), so a long shared prefix (a system prompt, a
few-shot preamble) is evaluated once and survives restarts.

One entry per saved prompt: its key is derived from the model identity + context format
(the store's namespace), the tenant namespace (one API key's prefixes never serve another's,
see server/tenants.py) and the exact token prefix; its value is `seal()`ed bytes
(cache/sealed.py) holding the tenant, the tokens and llama.cpp's state, so an entry and what
the index knows of it are written and evicted together, and nothing from the directory is
ever unpickled.

The engine thread only reads the in-memory index (`longest`) and one entry (`load`).
Writes, index refreshes and deletions run on one background thread; the write queue is
bounded (saves are dropped under pressure, never waited for). Every store error is logged
and survived: the request then evaluates its prompt; repeated errors switch the store off.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import logging
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import diskcache

from localllm.cache.sealed import SealError, open_cache, read_header, reader_of, seal, unseal
from localllm.engine.prefix import common_prefix_len

log = logging.getLogger(__name__)
INDEX_REFRESH_S = 5.0
"""How often the index looks for entries other processes added or evicted (one cheap query)."""
KIND = b"KVST"
GENERATION_KEY = "kv-generation"
"""Bumped by every writer after each write: the index rescans keys only when it moved."""
MAX_PENDING_WRITES = 2
MAX_INDEX_ENTRIES = 4096
MAX_SCANNED_KEYS = 65536
MAX_TOKENS = 1 << 20
MAX_TENANT_BYTES = 1024
_TENANT_TAG = "#tenant="
MAX_CONSECUTIVE_ERRORS = 5
DB_TIMEOUT_S = 2.0
"""SQLite busy timeout: the engine thread never waits long on another process's lock."""


@dataclass(frozen=True, slots=True)
class PrefixStateConfig:
    directory: Path
    namespace: str
    """Model identity and context format: states of other models or layouts never match."""
    min_tokens: int = 512
    """Only prompts at least this long are saved (and only such prefixes restored)."""
    size_limit_bytes: int = 2 * 2**30
    max_pending_bytes: int = 512 * 2**20
    """States queued for writing, at most; a save beyond it is dropped."""


class PrefixStateDiskStore:
    """Implements the engine's PrefixStateStore contract (engine/contracts.py)."""

    def __init__(self, config: PrefixStateConfig) -> None:
        self.config = config
        self.min_tokens = config.min_tokens
        self.num_saved = self.num_restored = self.num_errors = self.num_dropped = self.num_rejected = 0
        self.error: str | None = None
        self._index: dict[str, tuple[str, list[int]]] = {}
        """entry key -> (tenant namespace, token ids)"""
        self._pending: dict[str, tuple[str, list[int], int]] = {}
        """Queued writes: key -> (tenant namespace, tokens, size of the state in bytes)."""
        self._signature: tuple[int, int] | None = None
        self._refresh_due_s = 0.0
        self._refresh_queued = False
        self._closed = False
        self._num_consecutive_errors = 0
        self._lock = threading.Lock()
        self._prefix = "kv1:" + hashlib.sha256(config.namespace.encode()).hexdigest()[:32] + ":"
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefix-state-writer")
        self._db: diskcache.Cache | None = None
        self._cache: diskcache.Cache | None = None
        """The open cache while the store is active; None once disabled."""
        try:
            self._db = self._cache = open_cache(str(config.directory), size_limit=config.size_limit_bytes,
                                                eviction_policy="least-recently-used", timeout=DB_TIMEOUT_S)
            self._refresh()
        except Exception as exc:
            self._fail("open", exc, disable=True)

    # -- engine thread ----------------------------------------------------------------

    def longest(self, prompt_ids: list[int], namespace: str = "") -> tuple[str, int] | None:
        """(entry key, tokens shared with the prompt) of the best indexed prefix of `namespace`,
        if any. Never touches the disk: a due index refresh is queued on the writer thread."""
        if self._cache is None:
            return None
        self._schedule_refresh()
        with self._lock:
            return _best(self._index.items(), prompt_ids, self.min_tokens, namespace)

    def load(self, key: str) -> bytes | None:
        """The checked state of an indexed entry, or None (gone, foreign, truncated, corrupt:
        such an entry leaves the index, so the next `longest` offers the next best)."""
        cache = self._cache
        with self._lock:
            expected = self._index.get(key)
        if cache is None or expected is None:
            return None
        try:
            value = cache.get(key, read=True)
            if value is None:  # evicted, or cleared by another process
                self._forget(key)
                return None
            with reader_of(value) as reader:
                payload = unseal(reader, KIND, self.config.namespace, self.config.size_limit_bytes)
            tenant, token_ids, state = _unpack(payload)
            if (tenant, token_ids) != expected or self._key(token_ids, tenant) != key:
                raise SealError("its tenant and tokens do not match its key")
        except SealError as exc:
            self._reject(key, exc)
            return None
        except Exception as exc:
            self._forget(key)
            self._fail("read", exc)
            return None
        with self._lock:
            self.num_restored += 1
            self._num_consecutive_errors = 0
        return state

    def covers(self, prompt_ids: list[int], namespace: str = "") -> bool:
        """Cheap: True if saving this evaluated prompt now would add little, so the engine need
        not copy its state out of llama.cpp: stored or queued prefixes cover most of it, the
        store is off, or the write queue is full (the save is dropped, and counted)."""
        if self._cache is None or self._closed or len(prompt_ids) < self.min_tokens:
            return True
        with self._lock:
            known = itertools.chain(self._index.items(), ((k, (n, t)) for k, (n, t, _) in self._pending.items()))
            best = _best(known, prompt_ids, self.min_tokens, namespace)
            if best is not None and best[1] >= 0.9 * len(prompt_ids):
                return True
            if len(self._pending) >= MAX_PENDING_WRITES:
                self.num_dropped += 1
                return True
        return False

    def save(self, token_ids: list[int], data: bytes, namespace: str = "") -> None:
        """Queues a write for requests of `namespace` and returns at once; drops it (counted)
        when the queue is full."""
        if self._cache is None or self._closed or len(namespace.encode()) > MAX_TENANT_BYTES:
            return
        key = self._key(token_ids, namespace)
        with self._lock:
            queued_bytes = sum(size for _, _, size in self._pending.values())
            if key in self._pending or len(self._pending) >= MAX_PENDING_WRITES \
                    or queued_bytes + len(data) > self.config.max_pending_bytes:
                self.num_dropped += 1
                return
            self._pending[key] = (namespace, list(token_ids), len(data))
        try:
            self._writer.submit(self._write, key, namespace, list(token_ids), data)
        except RuntimeError:  # closing
            with self._lock:
                self._pending.pop(key, None)

    def _schedule_refresh(self) -> None:
        now = time.monotonic()
        if now < self._refresh_due_s:
            return
        self._refresh_due_s = now + INDEX_REFRESH_S
        with self._lock:
            if self._refresh_queued or self._closed:
                return
            self._refresh_queued = True
        try:
            self._writer.submit(self._guarded_refresh)
        except RuntimeError:
            pass

    # -- writer thread ------------------------------------------------------------------

    def _write(self, key: str, namespace: str, token_ids: list[int], data: bytes) -> None:
        try:
            cache = self._cache
            if cache is None:
                return
            blob = seal(KIND, self.config.namespace, _pack(namespace, token_ids, data))
            before = len(cache)
            cache.set(key, blob)
            generation = _bump_generation(cache)
            after = len(cache)
            with self._lock:
                self._index[key] = (namespace, token_ids)
                self.num_saved += 1
                self._num_consecutive_errors = 0
                # Nobody else wrote and nothing was culled: the index is still complete.
                if self._signature == (generation - 1, before) and after == before + 1 + (generation == 1):
                    self._signature = (generation, after)
        except Exception as exc:  # disk full, ...
            self._fail("write", exc)
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def _guarded_refresh(self) -> None:
        try:
            if self._cache is not None:
                self._refresh()
        except Exception as exc:  # a locked or corrupt database: keep the old index
            self._fail("index refresh", exc)
        finally:
            with self._lock:
                self._refresh_queued = False

    def _refresh(self) -> None:
        """Re-reads the key list only when another writer moved the generation or the count,
        and reads the header and tokens only of entries not indexed yet."""
        cache = self._cache
        assert cache is not None
        generation = cache.get(GENERATION_KEY, 0)
        signature = (generation if isinstance(generation, int) else -1, len(cache))
        if signature == self._signature:
            return
        keys = [k for k in itertools.islice(cache.iterkeys(), MAX_SCANNED_KEYS)
                if type(k) is str and k.startswith(self._prefix)][:MAX_INDEX_ENTRIES]
        with self._lock:
            known = dict(self._index)
        index = {}
        for key in keys:
            entry = known.get(key) or self._read_entry(cache, key)
            if entry is not None:
                index[key] = entry
        with self._lock:
            self._index = index
            self._signature = signature

    def _read_entry(self, cache: diskcache.Cache, key: str) -> tuple[str, list[int]] | None:
        """(tenant, tokens) from the entry's header and the start of its payload (not the state)."""
        value = cache.get(key, read=True)
        if value is None:
            return None
        try:
            with reader_of(value) as reader:
                length, _ = read_header(reader, KIND, self.config.namespace, self.config.size_limit_bytes)
                tenant, token_ids = _read_head(reader, length)
            if self._key(token_ids, tenant) != key:
                raise SealError("its tenant and tokens do not match its key")
            return tenant, token_ids
        except SealError as exc:
            self._reject(key, exc)
            return None

    def _delete(self, key: str) -> None:
        try:
            if self._cache is not None:
                self._cache.delete(key)
        except Exception as exc:
            self._fail("delete", exc)

    # -- any thread ---------------------------------------------------------------------

    def _forget(self, key: str) -> None:
        with self._lock:
            self._index.pop(key, None)

    def _reject(self, key: str, exc: Exception) -> None:
        """A corrupt, truncated or foreign entry under one of our keys: never used, deleted."""
        self._forget(key)
        with self._lock:
            self.num_rejected += 1
        log.warning("prefix states at %s: ignoring and deleting entry %s: %s", self.config.directory, key, exc)
        if threading.current_thread().name.startswith("prefix-state-writer"):
            self._delete(key)
        else:
            try:
                self._writer.submit(self._delete, key)
            except RuntimeError:
                pass

    def _key(self, token_ids: list[int], namespace: str) -> str:
        digest = hashlib.sha256(self.config.namespace.encode())
        if namespace:
            digest.update(f"{_TENANT_TAG}{namespace}|".encode())
        digest.update(struct.pack(f"<{len(token_ids)}I", *token_ids))
        return self._prefix + digest.hexdigest()

    def flush(self) -> None:
        """Waits for queued writes and refreshes (shutdown, tests)."""
        self._writer.submit(lambda: None).result()

    def stats(self) -> dict:
        with self._lock:
            return {"active": self._cache is not None, "error": self.error, "entries": len(self._index),
                    "saved": self.num_saved, "restored": self.num_restored, "errors": self.num_errors,
                    "dropped": self.num_dropped, "rejected": self.num_rejected, "pending": len(self._pending)}

    def close(self) -> None:
        """Waits for queued writes, then closes the database. Idempotent."""
        self._closed = True
        self._writer.shutdown(wait=True)
        if self._db is not None:
            self._db.close()

    def _fail(self, action: str, exc: Exception, disable: bool = False) -> None:
        with self._lock:
            self.num_errors += 1
            self._num_consecutive_errors += 1
            self.error = f"{action} failed: {type(exc).__name__}: {exc}"
            disable = disable or self._num_consecutive_errors >= MAX_CONSECUTIVE_ERRORS
        if disable:
            self._cache = None
        log.warning("prefix states at %s: %s%s", self.config.directory, self.error,
                    "; prefix states are OFF (prompts are evaluated in full)" if disable else "")


def _bump_generation(cache: diskcache.Cache) -> int:
    try:
        return cache.incr(GENERATION_KEY)
    except TypeError:  # not an integer (a planted or foreign value): start again
        cache.delete(GENERATION_KEY)
        return cache.incr(GENERATION_KEY)


def _best(entries, prompt_ids: list[int], min_tokens: int, namespace: str) -> tuple[str, int] | None:
    best: tuple[str, int] | None = None
    for key, (owner, token_ids) in entries:
        if owner != namespace:
            continue
        shared = common_prefix_len(token_ids, prompt_ids)
        if shared >= min_tokens and (best is None or shared > best[1]):
            best = (key, shared)
    return best


def _pack(namespace: str, token_ids: list[int], state: bytes) -> bytes:
    """The payload: tenant (u16 length, UTF-8), token count (u32), tokens (u32 each), state."""
    tenant = namespace.encode()
    return (struct.pack("<H", len(tenant)) + tenant
            + struct.pack(f"<I{len(token_ids)}I", len(token_ids), *token_ids) + state)


def _read_head(reader: BinaryIO, length: int) -> tuple[str, list[int]]:
    """Tenant and tokens from the start of a `length`-byte payload (the layout `_pack` writes),
    each count bounded before it is read. Raises SealError."""
    try:
        (tenant_size,) = struct.unpack("<H", reader.read(2))
        if tenant_size > min(MAX_TENANT_BYTES, length):
            raise SealError(f"declares a tenant of {tenant_size} bytes")
        tenant = reader.read(tenant_size).decode()
        (num_tokens,) = struct.unpack("<I", reader.read(4))
        if num_tokens > min(MAX_TOKENS, length // 4):
            raise SealError(f"declares {num_tokens} tokens")
        return tenant, list(struct.unpack(f"<{num_tokens}I", reader.read(4 * num_tokens)))
    except (struct.error, UnicodeDecodeError) as exc:
        raise SealError(f"unreadable payload: {exc}") from exc


def _unpack(payload: bytes) -> tuple[str, list[int], bytes]:
    reader = io.BytesIO(payload)
    tenant, token_ids = _read_head(reader, len(payload))
    return tenant, token_ids, reader.read()
