"""Issue 14 items 5, 8, 9 and 10 over HTTP: pulls through the real aiohttp app and real
huggingface_hub from a hub-protocol server on loopback (tests/models/hub_server.py).

Pulls are bounded (free disk, one per file, cancelled when the client leaves), a quant or
name never becomes a path outside the store, a bare hub file never stands in for a
catalogue model, a catalogue file must keep the catalogue's sha256, and a file that fails
its checks is an error event and leaves nothing behind."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

import localllm.models.store as store_module
from localllm.config import Config
from localllm.models.registry import CatalogueError, load_catalogue
from localllm.models.store import ModelFileError, ModelStore, PulledFile
from localllm.server.app import create_app
from tests.models.hub_server import HubServer
from tests.security.gguf_files import model_metadata, write_gguf
from tests.serving import as_run_app_serves

BIG_REPO, BIG_FILE = "test-org/gemma-gguf", "gemma-3-270m-q4_k_m.gguf"
"""The bundled model (253 MB), served slowly where a pull must be caught mid-download."""
EVIL = "evil-org/evil/tiny.gguf"
"""A bare hub file named like the catalogue's `tiny`, with other weights."""


@dataclass
class Env:
    data_dir: Path
    hub: HubServer
    http: aiohttp.ClientSession
    tiny: Path
    """The catalogue's tiny model as the hub serves it."""
    base_url: str = ""
    """The server's, for a second client session (one that hangs up)."""

    def store(self) -> ModelStore:
        return ModelStore(self.data_dir, load_catalogue(self.data_dir / "models.toml"))

    def hub_files(self) -> list[Path]:
        """Model bytes in the hub cache (blobs, snapshots, partial downloads)."""
        hub_dir = self.data_dir / "hub"
        return [p for p in hub_dir.rglob("*") if p.is_file() and ("blobs" in p.parts or "snapshots" in p.parts)]


async def wait_until(condition, what: str, tries: int = 600) -> None:
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def events_of(response: aiohttp.ClientResponse) -> list[dict | str]:
    lines = (await response.text()).splitlines()
    return [line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]) for line in lines if line.startswith("data: ")]


async def first_progress(response: aiohttp.ClientResponse) -> dict:
    """Reads the stream until bytes are flowing."""
    async for raw in response.content:
        line = raw.decode().strip()
        if line.startswith("data: {"):
            event = json.loads(line[6:])
            if event["status"] == "downloading" and event["downloaded_bytes"] > 0:
                return event
            assert event["status"] == "downloading", event
    raise AssertionError("the stream ended before any progress")


async def assert_error(response: aiohttp.ClientResponse, status: int, param: str | None = None) -> dict:
    assert response.status == status, await response.text()
    error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.fixture()
def hub(model_path: Path, tmp_path: Path) -> Iterator[HubServer]:
    served = tmp_path / "served"
    served.mkdir()
    with HubServer() as server:
        server.state.add("test-org/tiny", "tiny.gguf", write_gguf(served / "tiny.gguf"))
        evil = write_gguf(served / "evil.gguf", model_metadata(**{"general.name": "not the catalogue's"}))
        server.state.add("evil-org/evil", "tiny.gguf", evil)
        bad = write_gguf(served / "bad.gguf", model_metadata(**{"general.alignment": "thirty-two"}))
        server.state.add("evil-org/evil", "bad-alignment.gguf", bad)
        server.state.add(BIG_REPO, BIG_FILE, model_path, load_catalogue()["gemma3-270m"].sha256)
        yield server
        server.state.block_delay_s = 0.0  # let any download still running finish fast


@pytest.fixture()
async def env(hub: HubServer, tmp_path: Path) -> AsyncIterator[Env]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    tiny = tmp_path / "served" / "tiny.gguf"
    gemma_sha = load_catalogue()["gemma3-270m"].sha256
    (data_dir / "models.toml").write_text(
        f'[models.tiny]\nhf_repo = "test-org/tiny"\nfile = "tiny.gguf"\nquant = "Q4_K_M"\n'
        f'sha256 = "{hashlib.sha256(tiny.read_bytes()).hexdigest()}"\n'
        f'[models.big]\nhf_repo = "{BIG_REPO}"\nfile = "{BIG_FILE}"\nsha256 = "{gemma_sha}"\n')
    config = Config.from_flat({"data_dir": str(data_dir), "hf_endpoint": hub.url, "admin_api_key": "k"})
    server = TestServer(create_app(config, loader=never_load), host="127.0.0.1")
    await server.start_server()
    as_run_app_serves(server)  # a pull must notice the hang-up itself
    try:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/")),
                                         headers={"Authorization": "Bearer k"}) as http:
            yield Env(data_dir, hub, http, tiny, str(server.make_url("/")))
    finally:
        await server.close()


async def never_load(*args, **kwargs):  # pulls need no loaded model
    raise RuntimeError("not loading a model in these tests")


async def pull(env: Env, model: str, quant: str | None = None) -> aiohttp.ClientResponse:
    body = {"model": model} if quant is None else {"model": model, "quant": quant}
    return await env.http.post("/admin/models/pull", json=body)


def files_outside(root: Path, inside: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and not p.is_relative_to(inside)}


async def test_traversal_quants_and_names_are_refused_and_nothing_is_written_outside(env: Env, tmp_path: Path):
    before = files_outside(tmp_path, env.data_dir)
    for quant in ["../../../escaped", str(tmp_path / "absolute"), "Q4_K_M/../../x", "..", "Q4_K_M\x00"]:
        await assert_error(await pull(env, EVIL, quant), 400, "quant")
        await assert_error(await pull(env, "tiny", quant), 400, "quant")
    await assert_error(await pull(env, EVIL, "Q8_0"), 400, "quant")  # a hub file has its own quant
    for model in ["evil-org/evil/../../../x.gguf", "evil-org/../evil/x.gguf", "/etc/passwd.gguf",
                  "evil-org/evil//x.gguf", "../tiny", "evil-org/evil/" + "a" * 10_000 + ".gguf"]:
        response = await pull(env, model)
        assert 400 <= response.status < 500, (model, response.status)
    assert files_outside(tmp_path, env.data_dir) == before
    assert env.hub.state.gets == 0 and not list(env.data_dir.rglob("*.pulled.json"))


def test_the_store_records_no_path_that_leaves_it(tmp_path: Path):
    store = ModelStore(tmp_path / "data", load_catalogue())
    blob = tmp_path / "data" / "hub" / "blob.gguf"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"GGUF")
    record = dict(name="tiny", quant="Q4_K_M", hf_repo="org/repo", file="x.gguf", revision="main",
                  commit="c", path=str(blob), sha256=None, size=4, mtime_ns=blob.stat().st_mtime_ns)
    for bad in [{"quant": "../../escaped"}, {"quant": str(tmp_path / "abs")}, {"name": "../x"},
                {"name": "org/../../x.gguf"}, {"path": str(tmp_path / "elsewhere.gguf")}]:
        with pytest.raises(ModelFileError):
            store.register(PulledFile(**{**record, **bad}))
    assert not list(tmp_path.rglob("*.pulled.json")) and not list(tmp_path.rglob("escaped*"))
    for ref in ["tiny:../../x", "tiny:/tmp/x", "gemma3-270m:Q4_K_M/.."]:
        with pytest.raises(KeyError):
            store.resolve(ref)


async def test_a_bare_pull_cannot_shadow_a_catalogue_name(env: Env):
    events = await events_of(await pull(env, EVIL))
    assert events[-1] == "[DONE]" and events[-2]["status"] == "done", events
    store = env.store()
    with pytest.raises(ModelFileError, match="not downloaded"):
        store.resolve("tiny")  # the evil file is not `tiny`
    assert events[-2]["name"] == EVIL
    events = await events_of(await pull(env, "tiny"))
    assert events[-2]["status"] == "done" and events[-2]["name"] == "tiny", events
    tiny_path, spec = store.resolve("tiny")
    assert tiny_path.read_bytes() == env.tiny.read_bytes() and spec.name == "tiny"
    evil_path, evil_spec = store.resolve(EVIL)
    assert evil_path != tiny_path and evil_spec.name == EVIL
    assert set(store.pulled_names()) == {"tiny", EVIL}


async def test_a_pulled_record_never_stands_in_for_a_catalogue_model(env: Env):
    """What an old server wrote for a bare pull named like a catalogue entry (a record under
    the catalogue's name, pointing at other weights) is not used for that entry."""
    events = await events_of(await pull(env, EVIL))
    evil = events[-2]
    assert evil["status"] == "done", events
    forged = env.data_dir / "models" / "tiny" / "Q4_K_M.pulled.json"
    forged.parent.mkdir(parents=True)
    forged.write_text(json.dumps({**{k: evil[k] for k in PulledFile.__dataclass_fields__}, "name": "tiny"}))
    with pytest.raises(ModelFileError):
        env.store().resolve("tiny")
    forged.write_text(json.dumps({**{k: evil[k] for k in PulledFile.__dataclass_fields__}, "name": "tiny",
                                  "hf_repo": "test-org/tiny"}))  # even claiming the catalogue's repo
    with pytest.raises(ModelFileError, match="sha256"):
        env.store().resolve("tiny")


async def test_a_tampered_catalogue_file_refuses_to_load(env: Env, monkeypatch: pytest.MonkeyPatch):
    events = await events_of(await pull(env, "tiny"))
    assert events[-2]["status"] == "done", events
    hashed: list[Path] = []
    real_sha256_file = store_module.sha256_file
    monkeypatch.setattr(store_module, "sha256_file", lambda path, *a, **k: hashed.append(path)
                        or real_sha256_file(path, *a, **k))
    store = env.store()
    path, _ = store.resolve("tiny")
    assert store.resolve("tiny")[0] == path and hashed == []  # verified at pull: not hashed per load
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, and the mtime is put back: only the bytes differ
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ModelFileError, match="does not match the catalogue's sha256"):
        store.resolve("tiny")
    assert len(hashed) == 1
    response = await env.http.get("/v1/plan", params={"model": "tiny"})
    error = await assert_error(response, 400)
    assert "sha256" in error["message"]


async def test_a_client_that_leaves_mid_pull_cancels_it(env: Env):
    env.hub.state.block_delay_s = 0.05  # 253 MB at 20 MB/s: a pull that would finish in ~13 s
    response = await pull(env, "big")
    assert response.status == 200
    progress = await first_progress(response)
    assert 0 < progress["downloaded_bytes"] < progress["total_bytes"]
    response.close()  # the client hangs up
    await wait_until(lambda: env.hub.state.active_gets == 0 and not list(env.data_dir.rglob("*.incomplete")),
                     "the download to stop")
    await asyncio.sleep(0.5)  # a pull that was not cancelled would register now
    assert env.hub_files() == [] and env.store().pulled("big") == []
    with pytest.raises(ModelFileError, match="not downloaded"):
        env.store().resolve("big")
    env.hub.state.block_delay_s = 0.0
    for _ in range(50):  # the slot frees as the cancelled thread ends
        again = await pull(env, "big")
        if again.status != 409:
            break
        await asyncio.sleep(0.1)
    events = await events_of(again)
    assert events[-2]["status"] == "done", events[-3:]


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_that_leaves_an_ollama_pull_cancels_it(env: Env, stream: bool):
    """Ollama's /api/pull: NDJSON progress, or (stream false) nothing until the end; either way a
    client that hangs up mid-download leaves no file, partial or registered."""
    env.hub.state.block_delay_s = 0.05
    async with aiohttp.ClientSession(base_url=env.base_url, headers={"Authorization": "Bearer k"}) as leaving:
        asking = asyncio.ensure_future(leaving.post("/api/pull", json={"model": "big", "stream": stream}))
        if stream:
            response = await asking
            assert response.status == 200 and response.content_type == "application/x-ndjson"
            async for line in response.content:
                if json.loads(line).get("completed"):
                    break
        else:
            await wait_until(lambda: list(env.data_dir.rglob("*.incomplete")), "the download to start")
            asking.cancel()
    await wait_until(lambda: env.hub.state.active_gets == 0 and not list(env.data_dir.rglob("*.incomplete")),
                     "the download to stop")
    await asyncio.sleep(0.5)  # a pull that was not cancelled would register now
    assert env.hub_files() == [] and env.store().pulled("big") == []


async def test_a_second_concurrent_pull_of_the_same_file_gets_409(env: Env):
    env.hub.state.block_delay_s = 0.05
    first = await pull(env, "big")
    assert first.status == 200
    await first_progress(first)
    error = await assert_error(await pull(env, "big"), 409, "model")
    assert error["code"] == "pull_in_progress"
    await assert_error(await pull(env, f"{BIG_REPO}/{BIG_FILE}"), 409, "model")  # the same file, named bare
    events = await events_of(await pull(env, "tiny"))  # another file pulls meanwhile
    assert events[-2]["status"] == "done", events
    first.close()
    await wait_until(lambda: env.hub.state.active_gets == 0, "the first pull to stop")


async def test_a_file_too_large_for_the_disk_is_refused_before_download(env: Env):
    env.hub.state.advertised_sizes[("test-org/tiny", "tiny.gguf")] = 1 << 60
    error = await assert_error(await pull(env, "tiny"), 507, "model")
    assert error["code"] == "insufficient_storage" and "free" in error["message"]
    assert env.hub.state.gets == 0 and env.hub_files() == [] and env.store().pulled("tiny") == []


async def test_a_file_that_fails_validation_is_an_error_event_and_is_removed(env: Env):
    response = await pull(env, "evil-org/evil/bad-alignment.gguf")
    assert response.status == 200
    events = await events_of(response)
    assert events[-1] == "[DONE]" and events[-2]["status"] == "error", events
    assert "not a usable GGUF" in events[-2]["message"] and "alignment" in events[-2]["message"]
    assert env.hub.state.gets == 1 and env.hub_files() == []
    assert env.store().pulled("evil-org/evil/bad-alignment.gguf") == []
    assert (await env.http.get("/health")).status == 200


def test_a_catalogue_quant_that_is_a_path_is_refused_at_load(tmp_path: Path):
    (tmp_path / "models.toml").write_text('[models.x]\nhf_repo = "o/r"\nquant = "Q4_K_M"\n'
                                          '[models.x.files]\nQ4_K_M = "x.gguf"\n"../../escaped" = "y.gguf"\n')
    with pytest.raises(CatalogueError, match="invalid quantisation name"):
        load_catalogue(tmp_path / "models.toml")
