"""Pulls through real huggingface_hub from a real hub-protocol server on loopback."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tqdm import tqdm

from localllm.models.hub import DownloadError, VerificationError, pull, target_for
from localllm.models.registry import ModelSpec, load_catalogue
from localllm.models.store import ModelFileError, ModelStore
from tests.models.hub_server import COMMIT, HubServer

REPO = "test-org/gemma-gguf"
FILE = "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture()
def hub(model_path: Path, tmp_path: Path) -> Iterator[HubServer]:
    sha = load_catalogue()["gemma3-270m"].sha256  # model_path was verified against it
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"<html>this is not a model</html>\n" * 3000)
    with HubServer() as server:
        server.state.add(REPO, FILE, model_path, sha)
        server.state.add(REPO, "junk.gguf", junk)
        yield server


def store_with(data_dir: Path, toml: str) -> ModelStore:
    (data_dir / "models.toml").write_text(toml)
    return ModelStore(data_dir, load_catalogue(data_dir / "models.toml"))


def tiny_store(data_dir: Path, sha256: str | None = None, file: str = FILE) -> ModelStore:
    line = f'sha256 = "{sha256}"\n' if sha256 else ""
    return store_with(data_dir, f'[models.tiny]\nhf_repo = "{REPO}"\nfile = "{file}"\n{line}')


class Progress(tqdm):
    """A real tqdm bar that remembers what it was told (hf passes total/initial/updates)."""
    seen: list[tuple[int | None, int]] = []

    def __init__(self, *args, **kwargs) -> None:
        kwargs["file"] = open(os.devnull, "w")
        super().__init__(*args, **kwargs)

    def close(self) -> None:
        Progress.seen.append((self.total, self.n))
        super().close()


def test_pull_downloads_verifies_and_registers(hub: HubServer, model_path: Path, tmp_path: Path):
    store = tiny_store(tmp_path, sha256=load_catalogue()["gemma3-270m"].sha256)
    with pytest.raises(ModelFileError, match="localllm pull tiny"):
        store.resolve("tiny")
    Progress.seen = []
    record = pull(store, target_for("tiny", store.catalogue), endpoint=hub.url, tqdm_class=Progress)
    size = model_path.stat().st_size
    assert set(Progress.seen) == {(size, size)}  # close() may run twice (tqdm.__del__)
    path, spec = store.resolve("tiny")
    assert path == Path(record.path) and spec is not None and spec.name == "tiny"
    assert path == tmp_path / "hub" / "models--test-org--gemma-gguf" / "snapshots" / COMMIT / FILE
    assert record.quant == "Q4_K_M" and record.size == size and record.commit == COMMIT
    assert record.sha256 == spec.sha256
    assert not list((tmp_path / "hub").rglob("*.incomplete"))


def test_resume_after_a_cut_connection_uses_range(hub: HubServer, model_path: Path, tmp_path: Path):
    hub.state.cut_first_get_at = 40 * 1024 * 1024
    store = tiny_store(tmp_path)
    record = pull(store, target_for("tiny", store.catalogue), endpoint=hub.url)
    ranges = hub.state.range_headers()
    assert ranges and ranges[0].startswith("bytes=") and int(ranges[0][6:-1]) > 0
    # The record's sha256 was computed over the result and compared with the ETag.
    assert record.sha256 == load_catalogue()["gemma3-270m"].sha256
    assert Path(record.path).stat().st_size == model_path.stat().st_size


def test_sha256_mismatch_is_rejected_and_not_registered(hub: HubServer, tmp_path: Path):
    store = tiny_store(tmp_path, sha256="0" * 64)
    with pytest.raises(VerificationError, match="sha256"):
        pull(store, target_for("tiny", store.catalogue), endpoint=hub.url)
    with pytest.raises(ModelFileError, match="not downloaded"):
        store.resolve("tiny")
    assert not [p for p in (tmp_path / "hub").rglob("*") if p.is_file() and p.suffix != ".lock"
                and ".locks" not in p.parts and p.name != "CACHEDIR.TAG" and "refs" not in p.parts]


def test_non_gguf_file_is_rejected(hub: HubServer, tmp_path: Path):
    store = tiny_store(tmp_path, file="junk.gguf")
    with pytest.raises(VerificationError, match="not a usable GGUF"):
        pull(store, target_for("tiny", store.catalogue), endpoint=hub.url)
    assert store.pulled("tiny") == []
    assert not list((tmp_path / "hub").rglob("junk.gguf"))


def test_missing_file_is_a_clear_download_error(hub: HubServer, tmp_path: Path):
    store = tiny_store(tmp_path, file="absent.gguf")
    with pytest.raises(DownloadError, match="not found on the hub"):
        pull(store, target_for("tiny", store.catalogue), endpoint=hub.url)


def test_offline_fails_clearly_then_works_once_pulled(hub: HubServer, tmp_path: Path):
    store = tiny_store(tmp_path)
    target = target_for("tiny", store.catalogue)
    with pytest.raises(DownloadError, match="offline mode is on"):
        pull(store, target, offline=True, endpoint=hub.url)
    assert hub.state.requests == []  # offline means no request at all
    pull(store, target, endpoint=hub.url)
    seen = len(hub.state.requests)
    again = pull(store, target, offline=True, endpoint=hub.url)
    assert len(hub.state.requests) == seen and store.resolve("tiny")[0] == Path(again.path)


def test_bare_repo_file_pull_registers_under_its_hub_name(hub: HubServer, tmp_path: Path):
    store = ModelStore(tmp_path, load_catalogue())
    ref = f"{REPO}/{FILE}"
    record = pull(store, target_for(ref, store.catalogue), endpoint=hub.url)
    assert (record.name, record.quant) == (ref, "Q4_K_M")  # quant read from the GGUF
    path, spec = store.resolve(ref)
    assert path == Path(record.path) and isinstance(spec, ModelSpec) and spec.hf_repo == REPO
    assert ref in store.pulled_names()
    with pytest.raises(KeyError):  # never under a catalogue-style name
        store.resolve("gemma-3-270m-q4_k_m")
    assert store.remove(ref)
    assert not Path(record.path).exists() and not list((tmp_path / "hub").rglob("blobs/*"))
    with pytest.raises(ModelFileError, match="not downloaded"):
        store.resolve(ref)


def test_changed_file_after_pull_is_not_usable(hub: HubServer, tmp_path: Path):
    store = tiny_store(tmp_path)
    record = pull(store, target_for("tiny", store.catalogue), endpoint=hub.url)
    with open(record.path, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ModelFileError, match="not downloaded"):
        store.resolve("tiny")


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "localllm.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)


def test_cli_pull_with_hf_endpoint_and_offline_env(hub: HubServer, tmp_path: Path):
    tiny_store(tmp_path)
    env = {"LOCALLLM_DATA_DIR": str(tmp_path), "HF_ENDPOINT": hub.url}
    offline = cli(["pull", "tiny"], {**env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 1 and "offline" in offline.stderr and "Traceback" not in offline.stderr
    done = cli(["pull", "tiny"], env)
    assert done.returncode == 0, done.stderr
    assert "tiny" in done.stdout and "Q4_K_M" in done.stdout
    listed = cli(["list"], env)
    line = next(l for l in listed.stdout.splitlines() if l.startswith("tiny "))
    assert "yes" in line and "Q4_K_M" in line
    unknown = cli(["pull", "no-such-model"], env)
    assert unknown.returncode == 2 and "unknown model" in unknown.stderr and "Traceback" not in unknown.stderr
