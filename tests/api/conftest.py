"""Fixtures for the API tier: the real app over a scripted backend, no llama.cpp."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.api.fake_model import api_config, api_server


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of a fresh server with no keys (single-user mode)."""
    async with api_server(api_config(tmp_path)) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as session:
            yield session
