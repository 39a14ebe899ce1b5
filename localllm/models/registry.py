"""The model catalogue: models.toml (shipped) plus an optional user catalogue."""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from localllm.chat.families import FAMILIES

SHIPPED_CATALOGUE = Path(__file__).resolve().parents[2] / "models.toml"
DEFAULT_QUANT = "Q4_K_M"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_QUANT_RE = re.compile(r"^(?:I?Q[0-9]_[A-Z0-9_]{1,16}|TQ[0-9]_[0-9]|MXFP4(?:_MOE)?|F16|BF16|F32|F64)$", re.IGNORECASE)
"""The GGUF quantisation vocabulary (Q4_K_M, Q8_0, IQ4_XS, F16, ...): a quant name becomes a file name."""
MAX_FILE_CHARS = 512
"""A hub file reference longer than this is refused (file systems cap a name at 255 bytes)."""


class UnknownModel(KeyError):
    def __str__(self) -> str:
        return f"unknown model {self.args[0]!r}"


class CatalogueError(ValueError):
    """A catalogue entry is malformed; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    file: str = ""
    """GGUF file name of the default quantisation (`quant`)."""
    sha256: str | None = None
    """Of the default file; per-quant digests go in `sha256s`."""
    size_bytes: int | None = None
    quant: str = DEFAULT_QUANT
    """The default quantisation."""
    files: dict[str, str] = field(default_factory=dict)
    """Quantisation name -> file name in `hf_repo`."""
    sha256s: dict[str, str] = field(default_factory=dict)
    """Quantisation name -> sha256, where known."""
    hf_repo: str | None = None
    """Hugging Face repo id (`org/name`) the files download from."""
    revision: str = "main"
    bundled: str | None = None
    """Import name of a PyPI package that carries the weights (see store.py)."""
    chat_template: str | None = None
    """Jinja chat template overriding (or supplying) the GGUF's own."""
    template_family: str | None = None
    """How the chat template writes tool calls and reasoning (a name in chat.families.FAMILIES:
    hermes, llama3, mistral, generic); None: detected from the template."""
    default_ctx: int | None = None
    """Context the server uses for this model unless told otherwise."""
    description: str = ""
    licence: str = ""

    @property
    def quants(self) -> list[str]:
        return sorted(self.files) or [self.quant]

    def file_for(self, quant: str | None = None) -> str:
        quant = quant or self.quant
        if quant == self.quant and self.file:
            return self.file
        if quant not in self.files:
            raise CatalogueError(f"model {self.name!r} has no {quant} file (known: {', '.join(self.quants)})")
        return self.files[quant]

    def sha256_for(self, quant: str | None = None) -> str | None:
        quant = quant or self.quant
        return self.sha256s.get(quant) or (self.sha256 if quant == self.quant else None)


def load_catalogue(*paths: Path) -> dict[str, ModelSpec]:
    """Reads catalogues in order; later files override earlier entries by name."""
    specs: dict[str, ModelSpec] = {}
    for path in (SHIPPED_CATALOGUE, *paths):
        if not path.is_file():
            continue
        try:
            doc = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise CatalogueError(f"{path}: {exc}") from exc
        models = doc.get("models", {})
        if not isinstance(models, dict):
            raise CatalogueError(f"{path}: `models` must be a table of [models.NAME] entries")
        for name, entry in models.items():
            specs[name] = _spec_from_entry(path, name, entry)
    return specs


def _spec_from_entry(path: Path, name: str, entry: object) -> ModelSpec:
    """Every malformed entry (wrong field types included) is a CatalogueError naming it."""
    if not _NAME_RE.match(name):
        raise CatalogueError(f"{path}: invalid model name {name!r}")
    if not isinstance(entry, dict):
        raise CatalogueError(f"{path}: model {name!r}: must be a table")
    fields_ = {k: v for k, v in entry.items() if k in ModelSpec.__dataclass_fields__ and k != "name"}
    try:
        spec = ModelSpec(name=name, **fields_)
        if not spec.file and spec.quant in spec.files:
            spec = ModelSpec(name=name, **{**fields_, "file": spec.files[spec.quant]})
        problem = _problem(spec)
    except (TypeError, AttributeError, ValueError) as exc:  # e.g. file = 3, files = "x"
        raise CatalogueError(f"{path}: model {name!r}: a field has the wrong type ({exc})") from None
    if problem:
        raise CatalogueError(f"{path}: model {name!r}: {problem}")
    return spec


def _problem(spec: ModelSpec) -> str | None:
    """Why an entry is unusable, or None. File names must stay inside the repo/cache."""
    for key in ("file", "quant", "revision", "description", "licence", "sha256", "hf_repo", "bundled",
                "chat_template", "template_family"):
        value = getattr(spec, key)
        if not isinstance(value, str) and (value is not None or key in ("file", "quant", "revision")):
            return f"`{key}` must be a string"
    if not spec.file:
        return f"needs `file` or a `files` entry for its default quant {spec.quant}"
    for file in (spec.file, *spec.files.values()):
        if not is_safe_filename(file):
            return f"unsafe file name {file!r}"
    for quant in (spec.quant, *spec.files, *spec.sha256s):
        if not is_valid_quant(quant):
            return f"invalid quantisation name {quant!r} (want e.g. Q4_K_M, Q8_0, IQ4_XS, F16)"
    if spec.hf_repo is not None and not _REPO_RE.match(spec.hf_repo):
        return f"invalid hf_repo {spec.hf_repo!r} (want org/name)"
    for digest in [spec.sha256, *spec.sha256s.values()]:
        if digest is not None and not _SHA256_RE.match(digest):
            return f"invalid sha256 {digest!r} (want 64 lowercase hex digits)"
    if spec.template_family is not None and spec.template_family not in FAMILIES:
        return f"unknown template_family {spec.template_family!r} (known: {', '.join(sorted(FAMILIES))})"
    if spec.default_ctx is not None and spec.default_ctx < 64:
        return "default_ctx must be at least 64"
    return None


def is_valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))


def is_valid_repo(repo: str) -> bool:
    return bool(_REPO_RE.match(repo))


def is_valid_quant(quant: str) -> bool:
    """A quantisation name from the GGUF vocabulary: never a path."""
    return bool(_QUANT_RE.match(quant))


def is_safe_filename(file: str) -> bool:
    """Relative, no `..`, no backslashes, control characters or empty segments, bounded
    length: safe to join under a directory."""
    parts = file.split("/")
    return (0 < len(file) <= MAX_FILE_CHARS and "\\" not in file and file.isprintable()
            and all(p and p not in (".", "..") and len(p.encode()) <= 255 for p in parts))


def split_model_ref(ref: str) -> tuple[str, str | None] | None:
    """(name, quant or None) for a well-formed `NAME[:QUANT]`; None for anything else."""
    name, sep, quant = ref.partition(":")
    if not is_valid_name(name) or (sep and not is_valid_quant(quant)):
        return None
    return name, quant or None


def split_hub_ref(ref: str) -> tuple[str, str] | None:
    """(repo, file) for a well-formed `ORG/REPO/FILE.gguf`; None for anything else
    (a catalogue name, or a reference with an unsafe repo or file part)."""
    if ref.count("/") < 2 or not ref.endswith(".gguf"):
        return None
    org, repo, file = ref.split("/", 2)
    if not is_valid_repo(f"{org}/{repo}") or not is_safe_filename(file):
        return None
    return f"{org}/{repo}", file


def looks_like_hub_ref(ref: str) -> bool:
    """Shaped like `ORG/REPO/FILE.gguf` (whether or not its parts are safe)."""
    return ref.count("/") >= 2 and ref.endswith(".gguf")
