"""The model store as configured: one place that opens it (shipped + user catalogue, data dir).
Pure: no llama_cpp, no engine."""
from __future__ import annotations

from pathlib import Path

from localllm.config import Config
from localllm.models.registry import load_catalogue, looks_like_hub_ref, split_hub_ref, split_model_ref
from localllm.models.store import ModelStore


def user_catalogue_path(config: Config) -> Path:
    """The operator's catalogue, merged over the shipped models.toml."""
    return config.data_dir / "models.toml"


def open_store(config: Config) -> ModelStore:
    """Blocking (reads the catalogues): the store every command, route and load uses.
    Raises CatalogueError for a malformed catalogue."""
    return ModelStore(config.data_dir, load_catalogue(user_catalogue_path(config)))


def local_model_names(config: Config) -> list[str]:
    """Catalogue models usable without a download: bundled, placed in the store, or pulled."""
    store = open_store(config)
    names = {name for name, spec in store.catalogue.items()
             if spec.bundled or (spec.file and (store.models_dir / name / spec.file).is_file())}
    return sorted(names | set(store.pulled_names()))


def is_model_ref(ref: str) -> bool:
    """True for what a network client may name a model by: NAME, NAME:QUANT or a pulled
    ORG/REPO/FILE.gguf; never a file path (those are for the operator's own configuration)."""
    if looks_like_hub_ref(ref):
        return split_hub_ref(ref) is not None
    return split_model_ref(ref) is not None
