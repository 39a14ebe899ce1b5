"""Module boundaries from DESIGN.md, checked by importing each layer in a fresh interpreter."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE_ENGINE = ["localllm.engine.scheduler", "localllm.engine.slots", "localllm.engine.prefix",
               "localllm.engine.request", "localllm.engine.text", "localllm.types",
               "localllm.engine.contracts", "localllm.engine.stats"]


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


# --- The composition root (issue 18): the server runs without llama.cpp loaded ---

COMPOSITION = ROOT / "localllm" / "compose.py"
CLI_MODULES = {ROOT / "localllm" / "cli.py", *(ROOT / "localllm").rglob("commands.py")}


def modules_under(package: str) -> list[str]:
    directory = ROOT.joinpath(*package.split("."))
    return sorted(f"{package}.{p.stem}" for p in directory.glob("*.py") if p.stem != "__init__")


def test_no_server_module_loads_llama_cpp_even_transitively():
    """Each server module is imported in turn in one fresh interpreter; the first to pull in
    llama_cpp is named (the composition module imports llama.cpp only when it builds a model)."""
    modules = ["localllm.server.app", *modules_under("localllm.server"), "localllm.compose"]
    assert len(modules) > 10  # the listing finds the server package
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "    if 'llama_cpp' in sys.modules:\n"
            "        print(name)\n"
            "        break\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {out.stdout.strip()} loads llama_cpp"


def modules_imported_by(path: Path) -> set[str]:
    """Full dotted names of the localllm modules a file imports (at any depth of the file)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.startswith("localllm")}


def files_importing(prefix: str) -> set[Path]:
    return {p for p in (ROOT / "localllm").rglob("*.py")
            if any(m == prefix or m.startswith(prefix + ".") for m in modules_imported_by(p))}


def test_only_the_composition_module_wires_backend_engine_and_caches():
    backend_package = ROOT / "localllm" / "engine" / "llama_backend"
    outside_backend = {p for p in files_importing("localllm.engine.llama_backend")
                       if not p.is_relative_to(backend_package)}
    # cli.py imports the bindings first when serving (a load-order fix, docs/gpu.md), nothing from them
    assert outside_backend == {COMPOSITION, ROOT / "localllm" / "cli.py"}
    assert files_importing("localllm.cache.prefix_states") == {COMPOSITION}
    constructs_engine = {p for p in (ROOT / "localllm").rglob("*.py") if "AsyncEngine(" in p.read_text()}
    assert constructs_engine == {COMPOSITION}


def test_only_the_server_and_the_command_line_use_the_composition_module():
    users = files_importing("localllm.compose")
    server = ROOT / "localllm" / "server"
    assert users, "the check looks for the right module name"
    assert all(p.is_relative_to(server) or p in CLI_MODULES for p in users), users


def test_the_model_manager_and_catalogue_stay_pure():
    loaded = imported_modules("localllm.models.manager") | imported_modules("localllm.models.catalogue")
    assert "llama_cpp" not in loaded and "aiohttp" not in loaded
    assert "localllm.compose" not in loaded and "localllm.engine.core" not in loaded


def test_the_server_reaches_the_engine_only_through_async_engine():
    """No server module reads `engine.backend` (the llama.cpp side); AsyncEngine offers what it needs."""
    for path in (ROOT / "localllm" / "server").rglob("*.py"):
        tree = ast.parse(path.read_text())
        offenders = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "backend"]
        assert not offenders, f"{path.relative_to(ROOT)} lines {offenders}"
