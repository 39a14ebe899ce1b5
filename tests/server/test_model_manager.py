"""Several models by name: one load however many ask, keep-alive unloads, explicit load/unload."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from localllm.config import Config
from localllm.compose import load_model
from localllm.server.app import create_app

pytestmark = pytest.mark.integration
BODY = {"prompt": "Hello", "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory, model_path: Path):
    data_dir = tmp_path_factory.mktemp("manager-data")
    copy_dir = data_dir / "models" / "gemma-copy"
    copy_dir.mkdir(parents=True)
    (copy_dir / "gemma.gguf").symlink_to(model_path)  # a second catalogue model, same weights
    (data_dir / "models.toml").write_text('[models.gemma-copy]\nfile = "gemma.gguf"\n')
    config = Config.from_flat({"model": str(model_path), "parallel": 2, "ctx": 2048, "threads": 2,
                               "data_dir": str(data_dir), "keep_alive_s": 1})
    loads: list[str] = []

    async def counting_loader(cfg: Config, on_progress=None):
        loads.append(cfg.engine.model)
        return await load_model(cfg, on_progress)

    server = TestServer(create_app(config, loader=counting_loader), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        for _ in range(300):
            if (await http.get("/ready")).status == 200:
                break
            await asyncio.sleep(0.05)
        yield http, loads
    await server.close()


async def models_by_id(http: aiohttp.ClientSession) -> dict[str, dict]:
    return {m["id"]: m for m in (await (await http.get("/v1/models")).json())["data"]}


async def test_concurrent_requests_for_an_unloaded_model_load_it_once(served):
    http, loads = served
    assert (await models_by_id(http))["gemma-copy"]["status"] == "available"
    requests = [http.post("/v1/completions", json={**BODY, "model": "gemma-copy"}) for _ in range(5)]
    responses = await asyncio.gather(*requests, http.get("/ready"))
    assert [r.status for r in responses[:5]] == [200] * 5
    assert responses[5].status == 200  # the default model stays ready while another loads
    assert loads.count("gemma-copy") == 1
    assert (await models_by_id(http))["gemma-copy"]["status"] == "loaded"


async def test_keep_alive_unloads_an_idle_model_and_it_reloads_on_demand(served):
    http, loads = served
    assert (await http.post("/v1/completions", json={**BODY, "model": "gemma-copy"})).status == 200
    for _ in range(100):  # keep_alive is 1 s; the sweeper runs every second
        if (await models_by_id(http))["gemma-copy"]["status"] == "available":
            break
        await asyncio.sleep(0.1)
    assert (await models_by_id(http))["gemma-copy"]["status"] == "available"
    before = loads.count("gemma-copy")
    assert (await http.post("/v1/completions", json={**BODY, "model": "gemma-copy"})).status == 200
    assert loads.count("gemma-copy") == before + 1


async def test_admin_load_and_unload(served):
    http, _ = served
    loaded = await http.post("/admin/models/load", json={"model": "gemma-copy"})
    assert loaded.status == 200 and (await loaded.json())["status"] == "loaded"
    unloaded = await http.post("/admin/models/unload", json={"model": "gemma-copy"})
    assert unloaded.status == 200
    assert (await http.post("/admin/models/unload", json={"model": "gemma-copy"})).status == 404
    assert (await models_by_id(http))["gemma-copy"]["status"] == "available"


async def test_unknown_names_and_file_paths_are_404(served, model_path: Path):
    http, _ = served
    for ref in ["no-such-model", "/etc/hostname", str(model_path.parent / "missing.gguf")]:
        response = await http.post("/v1/completions", json={**BODY, "model": ref})
        assert response.status == 404, ref
        assert (await response.json())["error"]["param"] == "model"
