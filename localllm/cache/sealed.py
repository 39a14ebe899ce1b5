"""Cache entries that a writable cache directory cannot turn into code execution.

diskcache unpickles any row whose mode says "pickle", and unpickles keys stored as pickles:
whoever can write the cache directory could run code in the server. `RawDisk` refuses both
(such rows read as misses) and never follows a file name out of the directory. Values are
bytes `seal()`ed with a header (magic, kind, version, identity, length, sha256) that
`unseal()` checks before anything trusts them.
"""
from __future__ import annotations

import hashlib
import io
import os
import struct
from typing import BinaryIO

import diskcache
from diskcache.core import MODE_PICKLE, UNKNOWN

MAGIC = b"LLMC"
VERSION = 1
_HEADER = struct.Struct("<4s4sH16sQ32s")
"""magic, kind, version, identity digest, payload length, payload sha256."""
HEADER_SIZE = _HEADER.size


class UntrustedKey(str):
    """What a pickled (foreign) key reads as: never unpickled, never equal to one of ours."""


UNTRUSTED_KEY = UntrustedKey("\0untrusted-key")


class UntrustedEntry(OSError):
    """A pickled value or a file outside the cache directory. An OSError, so diskcache's
    `get` answers the default (a miss) instead of raising."""


class RawDisk(diskcache.Disk):
    """diskcache storage for str/bytes/int/float keys and str/bytes values, without pickle."""

    def put(self, key):
        if type(key) not in (str, bytes, int, float):
            raise TypeError(f"cache keys must be str or bytes, not {type(key).__name__}")
        return super().put(key)

    def get(self, key, raw):
        return super().get(key, raw) if raw else UNTRUSTED_KEY

    def store(self, value, read, key=UNKNOWN):
        if not read and type(value) not in (str, bytes, int, float):
            raise TypeError(f"cache values must be bytes or str, not {type(value).__name__}")
        return super().store(value, read, key)

    def fetch(self, mode, filename, value, read):
        if mode == MODE_PICKLE:
            raise UntrustedEntry("a pickled cache entry (not written by localllm); ignored")
        if filename is not None:
            self._inside(filename)
        return super().fetch(mode, filename, value, read)

    def remove(self, file_path):
        try:
            self._inside(file_path)
        except UntrustedEntry:
            return  # a planted row must not make eviction delete files elsewhere
        super().remove(file_path)

    def _inside(self, filename: str) -> None:
        if not isinstance(filename, str) or os.path.isabs(filename) or ".." in filename.split(os.sep):
            raise UntrustedEntry(f"cache file name {filename!r} leaves the cache directory")


def open_cache(directory: str, **settings) -> diskcache.Cache:
    """A diskcache.Cache over `directory` that never unpickles."""
    return diskcache.Cache(directory, disk=RawDisk, **settings)


class SealError(ValueError):
    """An entry that is not ours, of another identity, truncated or corrupted."""


def identity_digest(identity: str) -> bytes:
    return hashlib.sha256(identity.encode("utf-8", "surrogatepass")).digest()[:16]


def seal(kind: bytes, identity: str, payload: bytes) -> bytes:
    """`payload` behind a header binding it to `kind` (4 bytes) and `identity`."""
    header = _HEADER.pack(MAGIC, kind, VERSION, identity_digest(identity), len(payload),
                          hashlib.sha256(payload).digest())
    return header + payload


def read_header(reader: BinaryIO, kind: bytes, identity: str, max_payload: int) -> tuple[int, bytes]:
    """Checks the header at the reader's position; returns (payload length, sha256)."""
    raw = reader.read(HEADER_SIZE)
    if len(raw) != HEADER_SIZE:
        raise SealError("shorter than a header")
    magic, got_kind, version, digest, length, checksum = _HEADER.unpack(raw)
    if magic != MAGIC or got_kind != kind:
        raise SealError("not a localllm entry of this kind")
    if version != VERSION:
        raise SealError(f"format version {version}, expected {VERSION}")
    if digest != identity_digest(identity):
        raise SealError("written for another model or key")
    if length > max_payload:
        raise SealError(f"declares {length} bytes, more than the limit of {max_payload}")
    return length, checksum


def reader_of(value: object) -> BinaryIO:
    """A reader over a stored value (bytes, or the file diskcache opens with read=True).
    Raises SealError for anything else (a planted str or number row)."""
    if isinstance(value, (bytes, bytearray)):
        return io.BytesIO(value)
    if hasattr(value, "read"):
        return value  # type: ignore[return-value]
    raise SealError(f"a {type(value).__name__} entry, not sealed bytes (older format?)")


def unseal(value: bytes | BinaryIO, kind: bytes, identity: str, max_payload: int) -> bytes:
    """The payload, after checking header, exact length and checksum. Raises SealError."""
    reader = reader_of(value)
    length, checksum = read_header(reader, kind, identity, max_payload)
    payload = reader.read(length)
    if len(payload) != length or reader.read(1):
        raise SealError(f"truncated or padded: {len(payload)} of {length} bytes")
    if hashlib.sha256(payload).digest() != checksum:
        raise SealError("checksum mismatch")
    return payload
