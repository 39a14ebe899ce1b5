"""The models screen pulls from a loopback hub through a real server and draws the progress."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from textual.widgets import ProgressBar

from localllm.config import Config
from localllm.models.registry import load_catalogue
from localllm.server.app import create_app
from tests.models.hub_server import HubServer
from tests.tui.conftest import screen_text, wait_for
from tui.app import LocalLLMApp
from tui.client import Client
from tui.screens.models import ModelsScreen

REPO = "test-org/gemma-gguf"
FILE = "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture()
def hub(model_path: Path) -> Iterator[HubServer]:
    with HubServer() as server:
        server.state.add(REPO, FILE, model_path, load_catalogue()["gemma3-270m"].sha256)
        yield server


async def never_load(*args, **kwargs):  # the pull route needs no loaded model
    raise RuntimeError("not loading a model in this test")


async def test_pull_shows_progress_then_the_plan(hub: HubServer, tmp_path: Path, model_path: Path):
    config = Config.from_flat({"data_dir": str(tmp_path), "hf_endpoint": hub.url, "admin_api_key": "k"})
    server = TestServer(create_app(config, loader=never_load), host="127.0.0.1")
    await server.start_server()
    try:
        app = LocalLLMApp(Client(str(server.make_url("/")).rstrip("/"), "k"), poll_interval_s=0.5)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("f4")
            screen = app.screen
            assert isinstance(screen, ModelsScreen)
            await pilot.press("p", *f"{REPO}/{FILE}", "enter")
            await wait_for(pilot, lambda: "pulled" in screen_text(app), "the pull finishing", tries=600)
            bar = screen.query_one("#pull-progress", ProgressBar)
            size = model_path.stat().st_size
            assert screen.num_progress_events > 0
            assert bar.total == size and bar.progress == size and bar.display
            assert "100%" in screen_text(app)
            await wait_for(pilot, lambda: "GPU layers:" in screen_text(app), "the pulled model's memory plan")
    finally:
        await server.close()
