"""Downloads from the Hugging Face hub (or a mirror via HF_ENDPOINT) into `<data_dir>/hub`.

huggingface_hub does the transfer: hub cache layout, ETag/commit resolution,
atomic rename of a finished blob, and Range-resume after a dropped connection.
We add what it does not: a sha256 check (catalogue digest, else the LFS ETag,
which is the file's sha256), a GGUF header check, and registration only after
both pass, so a bad or partial file is never usable.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localllm.models.gguf import GGUFError, GGUFInfo, read_gguf
from localllm.models.plan import ModelFacts
from localllm.models.registry import (
    CatalogueError, ModelSpec, UnknownModel, is_safe_filename, is_valid_name, is_valid_repo,
)
from localllm.models.store import ModelFileError, ModelStore, PulledFile, sha256_file

log = logging.getLogger(__name__)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(ModelFileError):
    """The hub could not deliver the file (network, missing repo/file, offline)."""


class VerificationError(ModelFileError):
    """The downloaded file is not what was expected; it has been deleted."""


@dataclass(frozen=True, slots=True)
class PullTarget:
    """One file to fetch: a catalogue entry's quant, or a bare `org/repo/file.gguf`."""
    name: str
    hf_repo: str
    file: str
    quant: str | None
    """None for bare repo files: read from the GGUF once downloaded."""
    revision: str = "main"
    sha256: str | None = None


def target_for(ref: str, catalogue: dict[str, ModelSpec], quant: str | None = None) -> PullTarget:
    """Parses `NAME` or `ORG/REPO/FILE.gguf`; raises UnknownModel or CatalogueError."""
    if ref.count("/") >= 2 and ref.endswith(".gguf"):
        org, repo, file = ref.split("/", 2)
        if not is_valid_repo(f"{org}/{repo}") or not is_safe_filename(file):
            raise CatalogueError(f"invalid hub file reference {ref!r} (want ORG/REPO/FILE.gguf)")
        return PullTarget(name_for_file(file), f"{org}/{repo}", file, quant)
    if not is_valid_name(ref) or ref not in catalogue:
        raise UnknownModel(ref)
    spec = catalogue[ref]
    if spec.hf_repo is None:
        raise CatalogueError(f"model {ref!r} has no hf_repo to download from"
                             + (" (it is bundled: nothing to pull)" if spec.bundled else ""))
    quant = quant or spec.quant
    return PullTarget(spec.name, spec.hf_repo, spec.file_for(quant), quant,
                      spec.revision, spec.sha256_for(quant))


def name_for_file(file: str) -> str:
    """A catalogue-style name for a bare hub file: its stem, lower-cased and sanitised."""
    stem = Path(file).name.removesuffix(".gguf").lower()
    return re.sub(r"[^a-z0-9._-]+", "-", stem).strip("-._")[:128] or "model"


def is_offline(flag: bool = False) -> bool:
    """--offline, or HF_HUB_OFFLINE=1 as huggingface_hub itself read it at import."""
    from huggingface_hub import constants
    return flag or constants.is_offline_mode()


def pull(store: ModelStore, target: PullTarget, *, offline: bool = False,
         endpoint: str | None = None, tqdm_class: Any = None) -> PulledFile:
    """Blocking: downloads (or finds in the hub cache), verifies and registers one file."""
    offline = is_offline(offline)
    pointer = _download(store.hub_dir, target, offline, endpoint, tqdm_class)
    try:
        info, digest = _verify(pointer, target.sha256)
    except VerificationError:
        discard_cached(pointer, store.hub_dir)
        raise
    quant = target.quant or info.file_type
    stat = pointer.stat()
    record = PulledFile(name=target.name, quant=quant, hf_repo=target.hf_repo, file=target.file,
                        revision=target.revision, commit=pointer.parent.name, path=str(pointer),
                        sha256=digest, size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    store.register(record)
    return record


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


def _verify(pointer: Path, expected_sha256: str | None) -> tuple[GGUFInfo, str | None]:
    """sha256 against the catalogue (else the LFS ETag blob name), then the GGUF header."""
    etag = Path(os.path.realpath(pointer)).name
    expected = expected_sha256 or (etag if _SHA256_RE.match(etag) else None)
    digest = None
    if expected is not None:
        digest = sha256_file(pointer)
        if digest != expected:
            raise VerificationError(f"{pointer.name}: sha256 {digest} does not match the expected "
                                    f"{expected}; the file was deleted")
    try:
        info = read_gguf(pointer)
    except GGUFError as exc:
        raise VerificationError(f"{pointer.name} is not a usable GGUF file ({exc}); it was deleted") from None
    return info, digest


def discard_cached(pointer: Path, hub_dir: Path) -> None:
    """Deletes a snapshot entry and its blob, so hf will not hand the bad file out again."""
    blob = Path(os.path.realpath(pointer))
    pointer.unlink(missing_ok=True)
    if blob != pointer and blob.is_relative_to(hub_dir.resolve()):
        blob.unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def quant_sizes(spec: ModelSpec, endpoint: str | None = None) -> dict[str, int]:
    """Blocking: each offered quant's file size, the catalogue's when known, else the hub's
    (a HEAD request: X-Linked-Size). A quant the hub cannot size is left out."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    sizes: dict[str, int] = {}
    for quant in spec.quants if spec.hf_repo else []:
        if quant == spec.quant and spec.size_bytes:
            sizes[quant] = spec.size_bytes
            continue
        try:
            url = hf_hub_url(spec.hf_repo, spec.file_for(quant), revision=spec.revision, endpoint=endpoint)
            size = get_hf_file_metadata(url, endpoint=endpoint).size
        except Exception as exc:  # unreachable hub, missing file: that quant is simply not offered
            log.info("no size for %s %s: %s", spec.name, quant, _first_line(exc))
            continue
        if size:
            sizes[quant] = size
    return sizes


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
