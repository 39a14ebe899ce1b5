"""Downloads from the Hugging Face hub (or a mirror via HF_ENDPOINT) into `<data_dir>/hub`.

huggingface_hub does the transfer: hub cache layout, ETag/commit resolution,
atomic rename of a finished blob, and Range-resume after a dropped connection.
We add what it does not: a free-disk check against the hub's file size before any
byte is fetched, cancellation (the progress hook raises PullCancelled; hf deletes
its partial file), a sha256 check (catalogue digest, else the LFS ETag, which is
the file's sha256), a GGUF header check, and registration only after all pass, so
a bad, partial or abandoned file is never usable.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localllm.models.gguf import GGUFError, GGUFInfo, read_gguf
from localllm.models.plan import ModelFacts
from localllm.models.registry import (
    CatalogueError, ModelSpec, UnknownModel, is_valid_name, is_valid_quant, looks_like_hub_ref,
    split_hub_ref,
)
from localllm.models.store import (
    ModelFileError, ModelStore, PulledFile, discard_cached, is_inside, sha256_file,
)

log = logging.getLogger(__name__)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MIB = 1024 * 1024
FREE_DISK_RESERVE_BYTES = 256 * MIB
"""Free disk a pull must leave on the store's file system (logs, caches and the OS need some)."""


class DownloadError(ModelFileError):
    """The hub could not deliver the file (network, missing repo/file, offline)."""


class VerificationError(ModelFileError):
    """The downloaded file is not what was expected; it has been deleted."""


class InsufficientSpace(ModelFileError):
    """The file would not fit the free disk; nothing was downloaded."""


class PullCancelled(Exception):
    """The pull was cancelled (its client left); its partial file is gone and nothing was registered."""


@dataclass(frozen=True, slots=True)
class PullTarget:
    """One file to fetch: a catalogue entry's quant, or a bare `org/repo/file.gguf`."""
    name: str
    """The catalogue name, or `ORG/REPO/FILE.gguf` for a bare hub file (never a catalogue name)."""
    hf_repo: str
    file: str
    quant: str | None
    """None for bare repo files: read from the GGUF once downloaded."""
    revision: str = "main"
    sha256: str | None = None


def target_for(ref: str, catalogue: dict[str, ModelSpec], quant: str | None = None) -> PullTarget:
    """Parses `NAME` or `ORG/REPO/FILE.gguf`; raises UnknownModel or CatalogueError."""
    if quant is not None and not is_valid_quant(quant):
        raise CatalogueError(f"invalid quantisation {quant!r} (want e.g. Q4_K_M, Q8_0, IQ4_XS, F16)")
    if looks_like_hub_ref(ref):
        parts = split_hub_ref(ref)
        if parts is None:
            raise CatalogueError(f"invalid hub file reference {ref!r} (want ORG/REPO/FILE.gguf)")
        if quant is not None:
            raise CatalogueError("a hub file has one quantisation: quant applies to catalogue names only")
        return PullTarget(ref, parts[0], parts[1], None)
    if not is_valid_name(ref) or ref not in catalogue:
        raise UnknownModel(ref)
    spec = catalogue[ref]
    if spec.hf_repo is None:
        raise CatalogueError(f"model {ref!r} has no hf_repo to download from"
                             + (" (it is bundled: nothing to pull)" if spec.bundled else ""))
    quant = quant or spec.quant
    return PullTarget(spec.name, spec.hf_repo, spec.file_for(quant), quant,
                      spec.revision, spec.sha256_for(quant))


def is_offline(flag: bool = False) -> bool:
    """--offline, or HF_HUB_OFFLINE=1 as huggingface_hub itself read it at import."""
    from huggingface_hub import constants
    return flag or constants.is_offline_mode()


def pull(store: ModelStore, target: PullTarget, *, offline: bool = False,
         endpoint: str | None = None, tqdm_class: Any = None, cancel: threading.Event | None = None,
         check_space: bool = True) -> PulledFile:
    """Blocking: downloads (or finds in the hub cache), verifies and registers one file.
    Raises InsufficientSpace before downloading a file the disk cannot hold (unless the
    caller checked already: check_space=False), PullCancelled once `cancel` is set."""
    offline = is_offline(offline)
    if check_space:
        check_free_space(store, target, offline=offline, endpoint=endpoint)
    was_cached = _cached(store.hub_dir, target) is not None
    _stop_if(cancel)
    pointer = _download(store.hub_dir, target, offline, endpoint, _cancellable(tqdm_class, cancel))
    try:
        info, digest = _verify(pointer, store.hub_dir, target.sha256, cancel)
        _stop_if(cancel)
    except PullCancelled:
        if not was_cached:  # what this pull fetched goes; a file cached before stays
            discard_cached(pointer, store.hub_dir)
        raise
    except VerificationError:
        discard_cached(pointer, store.hub_dir)
        raise
    except Exception as exc:  # whatever a hostile file provokes, it is not kept
        discard_cached(pointer, store.hub_dir)
        raise VerificationError(f"{pointer.name} could not be checked ({type(exc).__name__}); "
                                "it was deleted") from exc
    quant = target.quant or info.file_type
    stat = pointer.stat()
    record = PulledFile(name=target.name, quant=quant, hf_repo=target.hf_repo, file=target.file,
                        revision=target.revision, commit=pointer.parent.name, path=str(pointer),
                        sha256=digest, size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    store.register(record)
    return record


def check_free_space(store: ModelStore, target: PullTarget, *, offline: bool = False,
                     endpoint: str | None = None) -> int | None:
    """Blocking (one HEAD request): the file's size as the hub gives it, once checked to fit
    the free disk under the store less FREE_DISK_RESERVE_BYTES; raises InsufficientSpace.
    None when nothing will be downloaded (offline, cached) or the hub gives no size (the
    download then reports what is wrong)."""
    if is_offline(offline) or _cached(store.hub_dir, target) is not None:
        return None
    size = _hub_size(target.hf_repo, target.file, target.revision, endpoint)
    free = free_disk_bytes(store.hub_dir)
    if size is None or free is None:
        return size
    if size + FREE_DISK_RESERVE_BYTES > free:
        raise InsufficientSpace(
            f"{target.hf_repo}/{target.file} is {size / MIB:,.0f} MiB but the model store "
            f"({store.hub_dir}) has {free / MIB:,.0f} MiB free and keeps {FREE_DISK_RESERVE_BYTES // MIB} MiB "
            "in reserve; free some space (`localllm rm NAME`) and pull again")
    return size


def free_disk_bytes(path: Path) -> int | None:
    """Free bytes on the file system that holds (or will hold) `path`; None if unknown."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def _cached(hub_dir: Path, target: PullTarget) -> str | None:
    """The hub cache's file for the target's revision, if it has one."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(target.hf_repo, target.file, cache_dir=hub_dir, revision=target.revision)
    return found if isinstance(found, str) else None


def _stop_if(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise PullCancelled("the pull was cancelled")


def _cancellable(tqdm_class: Any, cancel: threading.Event | None) -> Any:
    """A progress class whose update() raises PullCancelled once `cancel` is set: the
    download loop calls it per chunk, and huggingface_hub then deletes its partial file."""
    if cancel is None:
        return tqdm_class
    if tqdm_class is None:
        from huggingface_hub.utils import tqdm as tqdm_class

    class Cancellable(tqdm_class):  # type: ignore[misc, valid-type]
        def update(self, n: float | None = 1) -> bool | None:
            _stop_if(cancel)
            return super().update(n)

    return Cancellable


def _download(cache_dir: Path, target: PullTarget, offline: bool,
              endpoint: str | None, tqdm_class: Any) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
        RepositoryNotFoundError, RevisionNotFoundError,
    )
    where = f"{target.hf_repo}/{target.file}"
    try:
        return Path(hf_hub_download(
            target.hf_repo, target.file, revision=target.revision, cache_dir=cache_dir,
            local_files_only=offline, endpoint=endpoint, tqdm_class=tqdm_class,
        ))
    except PullCancelled:
        raise
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        if offline:
            raise DownloadError(f"{where} is not downloaded and offline mode is on "
                                "(--offline or HF_HUB_OFFLINE=1): connect and pull again") from None
        raise DownloadError(f"cannot reach the hub for {where}: {_first_line(exc)}") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise DownloadError(f"not found on the hub: {where}@{target.revision} ({_first_line(exc)})") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        # OSError covers hf's size consistency check and httpx transport errors after retries.
        raise DownloadError(f"download of {where} failed: {_first_line(exc)}") from None
    except Exception as exc:  # httpx2 errors are not OSErrors; keep tracebacks away from users
        if type(exc).__module__.split(".")[0].startswith("httpx"):
            raise DownloadError(f"download of {where} failed: {_first_line(exc)}") from None
        raise


def _verify(pointer: Path, hub_dir: Path, expected_sha256: str | None,
            cancel: threading.Event | None = None) -> tuple[GGUFInfo, str | None]:
    """In the hub cache, sha256 against the catalogue (else the LFS ETag blob name), then the GGUF header."""
    blob = Path(os.path.realpath(pointer))
    if not is_inside(pointer, hub_dir):
        raise VerificationError(f"{pointer} resolves to {blob}, outside the hub cache {hub_dir}")
    expected = expected_sha256 or (blob.name if _SHA256_RE.match(blob.name) else None)
    digest = None
    if expected is not None:
        digest = sha256_file(pointer, on_block=lambda: _stop_if(cancel))
        if digest != expected:
            raise VerificationError(f"{pointer.name}: sha256 {digest} does not match the expected "
                                    f"{expected}; the file was deleted")
    try:
        info = read_gguf(pointer)
        ModelFacts.from_gguf(info)  # the figures the plan reads must be usable too
    except GGUFError as exc:
        raise VerificationError(f"{pointer.name} is not a usable GGUF file ({exc}); it was deleted") from None
    return info, digest


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def quant_sizes(spec: ModelSpec, endpoint: str | None = None) -> dict[str, int]:
    """Blocking: each offered quant's file size, the catalogue's when known, else the hub's
    (a HEAD request: X-Linked-Size). A quant the hub cannot size is left out."""
    sizes: dict[str, int] = {}
    for quant in spec.quants if spec.hf_repo else []:
        if quant == spec.quant and spec.size_bytes:
            sizes[quant] = spec.size_bytes
            continue
        size = _hub_size(spec.hf_repo, spec.file_for(quant), spec.revision, endpoint)  # type: ignore[arg-type]
        if size:  # a quant the hub cannot size is simply not offered
            sizes[quant] = size
    return sizes


def _hub_size(hf_repo: str, file: str, revision: str, endpoint: str | None) -> int | None:
    """Blocking (one HEAD request): the file's size as the hub gives it; None when the hub
    is unreachable, the file missing or unsized (callers carry on without it)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        url = hf_hub_url(hf_repo, file, revision=revision, endpoint=endpoint)
        return get_hf_file_metadata(url, endpoint=endpoint).size
    except Exception as exc:  # the download (if any) reports what is wrong, with its own message
        log.info("no size for %s/%s: %s", hf_repo, file, _first_line(exc))
        return None


def auto_quant(spec: ModelSpec, *, free_vram_bytes: int, free_ram_bytes: int,
               facts: ModelFacts | None = None, slots: int = 4, ctx: int = 8192, num_batch: int = 512,
               offline: bool = False, endpoint: str | None = None) -> tuple[str, str]:
    """Blocking: (quant, why) for `pull NAME` with no --quant (quant_choice.py has the rule).
    Offline, or when the hub sizes nothing: the catalogue's default, saying so.
    Raises NothingFits when no offered file fits."""
    from localllm.models.quant_choice import choose_for, weights_budgets

    if len(spec.quants) < 2:
        return spec.quant, f"{spec.quant}: the only quantisation in the catalogue"
    if is_offline(offline):
        return spec.quant, f"{spec.quant}: offline, so no sizes from the hub; the catalogue's default"
    sizes = quant_sizes(spec, endpoint)
    if not sizes:
        return spec.quant, f"{spec.quant}: the hub gave no file sizes; the catalogue's default"
    budgets = weights_budgets(free_vram_bytes=free_vram_bytes, free_ram_bytes=free_ram_bytes,
                              facts=facts, slots=slots, ctx=ctx, num_batch=num_batch)
    return choose_for(sizes, budgets)
