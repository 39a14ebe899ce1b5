"""Local GGUF files: the bundled default model (assembled once and verified) and
models pulled from the hub (usable only once registered after verification)."""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from localllm.models.registry import ModelSpec, UnknownModel, is_valid_name, is_valid_repo

log = logging.getLogger(__name__)


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
        self.catalogue = catalogue

    def resolve(self, name_or_path: str) -> tuple[Path, ModelSpec | None]:
        """A local GGUF path for an existing .gguf path, `NAME`, `NAME:QUANT` or a pulled
        `ORG/REPO/FILE.gguf`. Assembles the bundled model if needed; never downloads."""
        if name_or_path.endswith(".gguf") and Path(name_or_path).expanduser().is_file():
            return Path(name_or_path).expanduser().resolve(), None
        name, _, quant = self._split_ref(name_or_path)
        spec = self.catalogue.get(name)
        if spec is not None and (quant is None or quant == spec.quant):
            path = self.models_dir / spec.name / spec.file
            if self._is_verified(path, spec):
                return path, spec
            if spec.bundled:
                return self._assemble_bundled(spec, path), spec
        record = self.find_pulled(name, quant or (spec.quant if spec else None))
        if record is not None:
            return Path(record.path), spec or _spec_of(record)
        if spec is None and not self.pulled(name):
            raise UnknownModel(name_or_path)
        wanted = f"{name}:{quant}" if quant else name
        raise ModelFileError(f"model {wanted!r} is not downloaded; run `localllm pull {name}"
                             + (f" --quant {quant}`" if quant else "`"))

    def _split_ref(self, ref: str) -> tuple[str, str, str | None]:
        """`NAME[:QUANT]` or `ORG/REPO/FILE.gguf` -> (name, '', quant); unsafe names are unknown."""
        if ref.count("/") >= 2 and ref.endswith(".gguf"):
            org, repo, file = ref.split("/", 2)
            if is_valid_repo(f"{org}/{repo}"):
                from localllm.models.hub import name_for_file  # hub imports this module
                return name_for_file(file), "", None
        name, sep, quant = ref.partition(":")
        if not is_valid_name(name) or (sep and not is_valid_name(quant)):
            raise UnknownModel(ref)
        return name, sep, quant or None

    def register(self, record: PulledFile) -> None:
        """Changes state: records a verified download (atomically)."""
        directory = self.models_dir / record.name
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{record.quant}.pulled.json"
        tmp = target.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(asdict(record), indent=1))
        os.replace(tmp, target)

    def pulled(self, name: str) -> list[PulledFile]:
        """Intact verified downloads of `name`, any quant."""
        directory = self.models_dir / name
        records = []
        for path in sorted(directory.glob("*.pulled.json")) if is_valid_name(name) else []:
            try:
                record = PulledFile(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            if record.is_intact():
                records.append(record)
        return records

    def find_pulled(self, name: str, quant: str | None) -> PulledFile | None:
        """The download of `quant`, else (quant None or absent) the only or first one."""
        records = self.pulled(name)
        exact = [r for r in records if r.quant == quant]
        if exact:
            return exact[0]
        return records[0] if records and quant in (None, *(r.quant for r in records)) else None

    def pulled_names(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        return sorted(p.name for p in self.models_dir.iterdir() if p.is_dir() and self.pulled(p.name))

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
        """True if `path` holds the expected bytes; hashes once, then trusts a marker
        recording sha256, size and mtime (a changed file is hashed again)."""
        if not path.is_file():
            return False
        stat = path.stat()
        marker = _marker_path(path)
        try:
            seen = json.loads(marker.read_text())
            if seen == {"sha256": spec.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}:
                return True
        except (OSError, ValueError):
            pass
        if spec.sha256 is None:
            return True
        actual = sha256_file(path)
        if actual != spec.sha256:
            log.warning("%s has sha256 %s, expected %s; it will be replaced", path, actual, spec.sha256)
            return False
        self._write_marker(path, actual)
        return True

    @staticmethod
    def _write_marker(path: Path, sha256: str) -> None:
        stat = path.stat()
        tmp = _marker_path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps({"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))
        os.replace(tmp, _marker_path(path))

    def remove(self, name: str) -> bool:
        """Changes state: deletes the model's local files (hub cache entries included)."""
        if not is_valid_name(name) or (name not in self.catalogue and not self.pulled(name)):
            raise UnknownModel(name)
        from localllm.models.hub import discard_cached  # hub imports this module
        for record in self.pulled(name):
            discard_cached(Path(record.path), self.hub_dir)
        directory = self.models_dir / name
        if not directory.exists():
            return False
        shutil.rmtree(directory)
        return True


def _spec_of(record: PulledFile) -> ModelSpec:
    """A spec for a bare hub file pulled without a catalogue entry."""
    return ModelSpec(name=record.name, file=record.file, quant=record.quant,
                     hf_repo=record.hf_repo, revision=record.revision, sha256=record.sha256)


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
