"""Response cache on diskcache: an exact repeat of a deterministic request is answered
from disk, replaying the same deltas so a hit has the same shape as a miss.

Every failure of the cache (missing, full, unwritable or corrupt directory) is
logged, counted and survived: the server then serves without it.

Keys are strings and values JSON behind a sealed header (cache/sealed.py): nothing read
from the directory is ever unpickled, and an entry moved under another key is refused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache

from localllm.cache.sealed import SealError, open_cache, seal, unseal
from localllm.types import FinishReason, TokenDelta, TokenLogprob

log = logging.getLogger(__name__)
KIND = b"RESP"

Recorded = list[tuple[int, TokenDelta]]
"""(choice index, delta) in the order the client saw them."""


@dataclass(frozen=True, slots=True)
class ResponseCacheConfig:
    directory: Path
    size_limit_bytes: int = 512 * 2**20
    ttl_s: float = 7 * 24 * 3600.0
    enabled: bool = True


class ResponseCache:
    """Thread-safe (diskcache uses SQLite; several processes may share the directory).

    Blocking: call from a worker thread, not the event loop."""

    def __init__(self, config: ResponseCacheConfig) -> None:
        self.config = config
        self.num_hits = self.num_misses = self.num_errors = self.num_evictions = 0
        self.error: str | None = None
        self._lock = threading.Lock()
        self._cache: diskcache.Cache | None = None
        if config.enabled:
            try:
                self._cache = open_cache(str(config.directory), size_limit=config.size_limit_bytes,
                                         eviction_policy="least-recently-stored")
            except Exception as exc:  # unwritable, corrupt database, not a directory, ...
                self._fail("open", exc)

    @property
    def is_active(self) -> bool:
        return self._cache is not None

    def get(self, key: str) -> Recorded | None:
        """A recorded answer, or None (miss, expired, disabled, or unreadable). Counts hits."""
        if self._cache is None:
            return None
        try:
            raw = self._cache.get(key)
        except Exception as exc:
            self._fail("read", exc, disable=False)
            return None
        recorded = self._unseal(key, raw) if raw is not None else None
        with self._lock:
            if recorded is None:
                self.num_misses += 1
            else:
                self.num_hits += 1
        return recorded

    def put(self, key: str, recorded: Recorded, namespace: str) -> None:
        """Stores a complete answer under `key`, tagged with the model's namespace."""
        if self._cache is None:
            return
        try:
            before = len(self._cache)
            value = seal(KIND, key, _encode(recorded).encode())
            added = self._cache.set(key, value, expire=self.config.ttl_s, tag=namespace)
            evicted = max(0, before + int(added) - len(self._cache))
        except Exception as exc:  # disk full, permissions changed under us, ...
            self._fail("write", exc, disable=False)
            return
        with self._lock:
            self.num_evictions += evicted

    def clear(self, namespace: str | None = None) -> int:
        if self._cache is None:
            return 0
        return self._cache.evict(namespace) if namespace else self._cache.clear()

    def stats(self) -> dict[str, Any]:
        size = count = 0
        if self._cache is not None:
            try:
                size, count = self._cache.volume(), len(self._cache)
            except Exception as exc:
                self._fail("stat", exc, disable=False)
        return {"active": self.is_active, "error": self.error, "hits": self.num_hits, "misses": self.num_misses,
                "errors": self.num_errors, "evictions": self.num_evictions, "entries": count, "size_bytes": size,
                "size_limit_bytes": self.config.size_limit_bytes, "directory": str(self.config.directory)}

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()

    def _unseal(self, key: str, raw: object) -> Recorded | None:
        try:
            payload = unseal(raw, KIND, key, self.config.size_limit_bytes)  # type: ignore[arg-type]
        except SealError as exc:
            log.warning("response cache: ignoring entry %s: %s", key, exc)
            return None
        return _decode(payload)

    def _fail(self, action: str, exc: Exception, disable: bool = True) -> None:
        with self._lock:
            self.num_errors += 1
            self.error = f"{action} failed: {type(exc).__name__}: {exc}"
        log.warning("response cache at %s: %s%s", self.config.directory, self.error,
                    "; the response cache is OFF (set cache_dir / LOCALLLM_CACHE_DIR to a writable directory)"
                    if disable else "")
        if disable:
            self._cache = None


def request_key(model_identity: str, kind: str, prompts: Sequence[str | Sequence[int]], n: int,
                params: dict[str, Any], extra: dict[str, Any]) -> str:
    """sha256 over everything that decides the answer."""
    material = {"model": model_identity, "kind": kind, "prompts": [p if isinstance(p, str) else list(p)
                                                                   for p in prompts],
                "n": n, "params": params, "extra": extra}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def _encode(recorded: Recorded) -> str:
    """Plain JSON, not pickle: a cache written by another version never executes code."""
    return json.dumps([[index, d.text, d.token_ids, d.finish_reason.value if d.finish_reason else None,
                        d.num_prompt_tokens, d.num_generated_tokens,
                        [[lp.token_id, lp.logprob, [list(t) for t in lp.top]] for lp in d.logprobs or []]
                        if d.logprobs is not None else None, d.stop_sequence]
                       for index, d in recorded])


def _decode(raw: bytes) -> Recorded | None:
    """The recorded deltas, or None for an entry whose fields do not have the types we write
    (the directory is untrusted: a sealed entry may still hold anything)."""
    try:
        recorded = []
        for index, text, token_ids, reason, num_prompt, num_generated, logprobs, *rest in json.loads(raw):
            stop = rest[0] if rest else None  # entries written before stop strings were recorded have 7 fields
            if not (_ints(index, num_prompt, num_generated, *token_ids) and isinstance(text, str)
                    and len(rest) <= 1 and (stop is None or isinstance(stop, str))):
                raise ValueError("a field of the wrong type")
            delta = TokenDelta(
                request_id="cache", text=text, token_ids=list(token_ids),
                finish_reason=FinishReason(reason) if reason else None,
                num_prompt_tokens=num_prompt, num_cached_tokens=num_prompt,  # all of the prompt came from cache
                num_generated_tokens=num_generated,
                logprobs=None if logprobs is None else [_logprob(*entry) for entry in logprobs],
                stop_sequence=stop,
            )
            recorded.append((index, delta))
        return recorded
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        log.warning("response cache: ignoring an unreadable entry (%s)", exc)
        return None


def _logprob(token_id: object, logprob: object, top: list) -> TokenLogprob:
    pairs = tuple((a, b) for a, b in top)
    if not (_ints(token_id, *(a for a, _ in pairs)) and _numbers(logprob, *(b for _, b in pairs))):
        raise ValueError("a logprob of the wrong type")
    return TokenLogprob(token_id, logprob, pairs)  # type: ignore[arg-type]


def _ints(*values: object) -> bool:
    return all(type(v) is int for v in values)


def _numbers(*values: object) -> bool:
    return all(type(v) in (int, float) for v in values)
