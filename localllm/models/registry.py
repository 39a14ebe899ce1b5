"""The model catalogue: models.toml (shipped) plus an optional user catalogue."""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

SHIPPED_CATALOGUE = Path(__file__).resolve().parents[2] / "models.toml"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class UnknownModel(KeyError):
    def __str__(self) -> str:
        return f"unknown model {self.args[0]!r}"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    file: str
    """GGUF file name."""
    sha256: str | None = None
    size_bytes: int | None = None
    quant: str = "Q4_K_M"
    hf_repo: str | None = None
    bundled: str | None = None
    """Import name of a PyPI package that carries the weights (see store.py)."""
    chat_template: str | None = None
    """Jinja chat template overriding (or supplying) the GGUF's own."""
    description: str = ""
    licence: str = ""


def load_catalogue(*paths: Path) -> dict[str, ModelSpec]:
    """Reads catalogues in order; later files override earlier entries by name."""
    specs: dict[str, ModelSpec] = {}
    for path in (SHIPPED_CATALOGUE, *paths):
        if not path.is_file():
            continue
        doc = tomllib.loads(path.read_text())
        for name, entry in doc.get("models", {}).items():
            if not _NAME_RE.match(name):
                raise ValueError(f"{path}: invalid model name {name!r}")
            fields = {k: v for k, v in entry.items() if k in ModelSpec.__dataclass_fields__}
            specs[name] = ModelSpec(name=name, **fields)
    return specs


def is_valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))
