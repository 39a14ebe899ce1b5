"""The bundled model is assembled once, atomically, verified, and repaired when corrupt."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from localllm.models.registry import UnknownModel, load_catalogue
from localllm.models.store import ModelFileError, ModelStore


def test_bundled_model_is_assembled_once_and_reused(tmp_path: Path):
    store = ModelStore(tmp_path, load_catalogue())
    path, spec = store.resolve("gemma3-270m")
    assert path.is_relative_to(tmp_path) and path.stat().st_size == spec.size_bytes
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    mtime = path.stat().st_mtime_ns
    again, _ = store.resolve("gemma3-270m")
    assert again == path and path.stat().st_mtime_ns == mtime  # not rewritten
    assert not list(path.parent.glob("*.partial-*"))


def test_corrupt_model_file_is_replaced(tmp_path: Path):
    store = ModelStore(tmp_path, load_catalogue())
    path, spec = store.resolve("gemma3-270m")
    with path.open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00" * 64)
    repaired, _ = store.resolve("gemma3-270m")
    digest = hashlib.sha256(repaired.read_bytes()).hexdigest()
    assert digest == spec.sha256


def test_unknown_and_unsafe_names_are_refused(tmp_path: Path):
    store = ModelStore(tmp_path, load_catalogue())
    for name in ["nope", "../etc/passwd", "a/b", ""]:
        with pytest.raises(UnknownModel):
            store.resolve(name)


def test_catalogue_entry_without_a_local_file_says_how_to_get_it(tmp_path: Path):
    (tmp_path / "models.toml").write_text('[models.tiny]\nfile = "tiny.gguf"\nhf_repo = "org/tiny"\n')
    store = ModelStore(tmp_path, load_catalogue(tmp_path / "models.toml"))
    with pytest.raises(ModelFileError, match="localllm pull tiny"):
        store.resolve("tiny")


def test_the_store_does_not_import_the_hub():
    """models/hub.py builds on models/store.py, never the other way round (issue 18): not at
    import time, and not lazily inside a function either."""
    import ast
    import subprocess
    import sys

    import localllm.models.store as store_module

    tree = ast.parse(Path(store_module.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "localllm.models.hub" not in imported
    probe = "import sys, localllm.models.store; print('localllm.models.hub' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
