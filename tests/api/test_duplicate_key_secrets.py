"""Issue 14 item 12/13 (review): a secret under two keys (api_key == admin_api_key, or twice in
the key file with other names or scopes) made the last source win, so a request's name, limits
and admin rights depended on source order. Duplicates are refused at start, and a SIGHUP reload
that brings one keeps the old keys."""
from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest

from localllm.config import ConfigError
from localllm.server.app import create_app
from localllm.server.run import reload
from tests.api.fake_model import api_config, api_server


@pytest.mark.parametrize("flags, lines", [
    ({"api_key": "same-secret", "admin_api_key": "same-secret"}, None),
    ({}, "alice:same-secret\nbob:same-secret:admin\n"),
    ({}, "alice:same-secret\nalice:same-secret:admin\n"),
    ({}, "same-secret\nsame-secret\n"),
    ({"admin_api_key": "same-secret"}, "alice:same-secret\n"),
])
def test_a_repeated_secret_refuses_to_start(tmp_path: Path, flags: dict, lines: str | None):
    if lines is not None:
        (tmp_path / "keys.txt").write_text(lines)
        flags = {**flags, "api_key_file": str(tmp_path / "keys.txt")}
    with pytest.raises(ConfigError, match="same secret"):
        create_app(api_config(tmp_path, **flags))


async def test_a_reload_that_repeats_a_secret_keeps_the_old_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    key_file = tmp_path / "keys.txt"
    key_file.write_text("alice:alice-secret\n")
    async with api_server(api_config(tmp_path, api_key_file=str(key_file))) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        key_file.write_text("alice:alice-secret\nroot:alice-secret:admin\n")
        with caplog.at_level(logging.ERROR, logger="localllm.server.run"):
            await reload(server.app)
        assert "keeping the old API keys" in caplog.text and "same secret" in caplog.text
        alice = {"Authorization": "Bearer alice-secret"}
        assert (await http.get("/v1/models", headers=alice)).status == 200
        refused = await http.post("/admin/models/unload", json={}, headers=alice)  # not promoted to admin
        assert refused.status == 403 and (await refused.json())["error"]["code"] == "insufficient_scope"
