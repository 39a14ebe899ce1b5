"""Module boundaries from DESIGN.md, checked by importing each layer in a fresh interpreter."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE_ENGINE = ["localllm.engine.scheduler", "localllm.engine.slots", "localllm.engine.prefix",
               "localllm.engine.request", "localllm.engine.text", "localllm.types"]


def imported_modules(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", PURE_ENGINE)
def test_pure_engine_modules_use_only_the_standard_library(module):
    loaded = imported_modules(module)
    third_party = {m.split(".")[0] for m in loaded} & {"llama_cpp", "numpy", "aiohttp", "textual", "diskcache"}
    assert not third_party, f"{module} pulls in {third_party}"


def test_async_engine_does_not_import_llama_cpp_or_aiohttp():
    loaded = imported_modules("localllm.engine.async_engine")
    assert "llama_cpp" not in loaded and "aiohttp" not in loaded


def imports_in(path: Path) -> set[str]:
    """Top-level package names that a source file imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_llama_backend_package_imports_llama_cpp():
    backend = ROOT / "localllm" / "engine" / "llama_backend"
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "localllm").rglob("*.py")
                 if "llama_cpp" in imports_in(p) and not p.is_relative_to(backend)]
    assert not offenders
    assert any("llama_cpp" in imports_in(p) for p in backend.glob("*.py"))  # the check looks in the right place


def test_engine_never_imports_the_server_or_the_model_manager():
    for path in (ROOT / "localllm" / "engine").rglob("*.py"):
        source = path.read_text()
        assert "localllm.server" not in source and "localllm.models" not in source, path


def test_tui_imports_nothing_from_localllm():
    for path in (ROOT / "tui").rglob("*.py"):
        assert "localllm" not in imports_in(path), path
