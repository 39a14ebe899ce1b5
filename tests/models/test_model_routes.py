"""Model admin over HTTP: a pull with streamed progress from a loopback hub, and the memory plan."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from localllm.config import Config
from localllm.models.registry import load_catalogue
from localllm.server.app import create_app
from tests.models.hub_server import HubServer

REPO = "test-org/gemma-gguf"
FILE = "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture()
def hub(model_path: Path) -> Iterator[HubServer]:
    with HubServer() as server:
        server.state.add(REPO, FILE, model_path, load_catalogue()["gemma3-270m"].sha256)
        yield server


async def never_load(config, on_progress=None):  # these routes need no loaded model
    raise RuntimeError("not loading a model in this test")


async def test_pull_streams_progress_then_done_and_plan_explains_itself(hub: HubServer, tmp_path: Path,
                                                                       model_path: Path):
    config = Config.from_flat({"data_dir": str(tmp_path), "hf_endpoint": hub.url, "admin_api_key": "k"})
    server = TestServer(create_app(config, loader=never_load), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/")),
                                         headers={"Authorization": "Bearer k"}) as http:
            response = await http.post("/admin/models/pull", json={"model": f"{REPO}/{FILE}"})
            assert response.status == 200
            events = [line[6:] for line in (await response.text()).splitlines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            updates = [json.loads(e) for e in events[:-1]]
            progress = [u for u in updates if u["status"] == "downloading"]
            assert progress and progress[-1]["downloaded_bytes"] == progress[-1]["total_bytes"] == model_path.stat().st_size
            assert updates[-1]["status"] == "done" and Path(updates[-1]["path"]).is_file()
            plan = await http.get("/v1/plan", params={"model": updates[-1]["name"]})
            assert plan.status == 200
            body = await plan.json()
            assert body["fits"] and body["n_gpu_layers"] == 0 and "context" in body["explanation"]
            missing = await http.post("/admin/models/pull", json={"model": "no-such-model"})
            assert missing.status == 404 and (await missing.json())["error"]["param"] == "model"
            anonymous = await aiohttp.ClientSession(base_url=str(server.make_url("/"))).__aenter__()
            try:
                assert (await anonymous.post("/admin/models/pull", json={"model": "x"})).status == 401
            finally:
                await anonymous.close()
    finally:
        await server.close()
