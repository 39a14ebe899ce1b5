"""Issue 14 items 12, 13, 16: auth fails closed, keys have scopes, metrics never carry key material.

One model load for the module; several apps (configurations) serve it in turn.
"""
from __future__ import annotations

import hashlib
import logging
import socket
from pathlib import Path

import aiohttp
import psutil
import pytest

from localllm.cli import main as cli_main
from localllm.config import Config, ConfigError
from localllm.compose import load_model
from localllm.server.app import create_app
from localllm.server.auth import KEYRING_KEY
from localllm.server.run import reload
from tests.serving import serving

pytestmark = pytest.mark.integration
BODY = {"prompt": "Hi", "max_tokens": 2, "temperature": 0}
UNNAMED_SECRET = "unnamed-secret-value"
KEYS = f"# team\nalice:alice-secret\nroot:root-secret:admin\n{UNNAMED_SECRET}\n"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def key_config(data_dir: Path, key_file: Path, **extra: object) -> Config:
    return Config.from_flat({"parallel": 2, "ctx": 2048, "threads": 2, "data_dir": str(data_dir),
                             "api_key_file": str(key_file), **extra})


@pytest.fixture(scope="module")
async def loaded(data_dir: Path, model_path: Path):
    model = await load_model(Config.from_flat({"parallel": 2, "ctx": 2048, "threads": 2,
                                               "data_dir": str(data_dir)}))
    yield model
    await model.engine.stop()


# -- item 12: a configured key source that yields no key is an error, never "no auth" ------------

@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n  # another\n"])
def test_an_empty_or_comment_only_key_file_refuses_to_start(tmp_path: Path, data_dir: Path, content: str):
    key_file = tmp_path / "keys.txt"
    key_file.write_text(content)
    with pytest.raises(ConfigError, match="no key"):
        create_app(key_config(data_dir, key_file))
    with pytest.raises(ConfigError, match="no key"):  # also beside a working api_key
        create_app(key_config(data_dir, key_file, api_key="flag-secret"))


def test_an_empty_secret_is_rejected_with_its_line(tmp_path: Path, data_dir: Path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text("alice:alice-secret\nbob:\n")
    with pytest.raises(ConfigError, match=r"keys.txt:2: empty key secret"):
        create_app(key_config(data_dir, key_file))


def test_empty_or_padded_api_keys_are_config_errors(monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("LOCALLLM_API_KEY", "")
    with pytest.raises(ConfigError, match="api_key is empty"):
        Config.load()
    monkeypatch.delenv("LOCALLLM_API_KEY")
    assert cli_main(["serve", "--api-key", ""]) == 2
    assert "api_key is empty" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="api_key has surrounding whitespace"):
        Config.from_flat({"api_key": " secret\n"})
    with pytest.raises(ConfigError, match="admin_api_key is empty"):
        Config.from_flat({"admin_api_key": ""})
    with pytest.raises(ConfigError, match="metrics_require_key needs"):
        Config.from_flat({"metrics_require_key": True})


async def test_a_reload_that_yields_no_key_keeps_the_old_keys(loaded, data_dir: Path, tmp_path: Path, caplog):
    key_file = tmp_path / "keys.txt"
    key_file.write_text("alice:alice-secret\n")
    async with serving(key_config(data_dir, key_file), loaded) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            key_file.write_text("# being edited\n")  # SIGHUP lands mid-edit
            with caplog.at_level(logging.ERROR, logger="localllm.server.run"):
                await reload(server.app)
            assert "keeping the old API keys" in caplog.text
            assert (await http.get("/v1/models")).status == 401  # auth still on
            assert (await http.get("/v1/models", headers={"Authorization": "Bearer"})).status == 401
            assert (await http.get("/v1/models", headers=bearer("alice-secret"))).status == 200
            key_file.write_text("bob:bob-secret\n")  # the finished edit takes effect
            await reload(server.app)
            assert (await http.get("/v1/models", headers=bearer("alice-secret"))).status == 401
            assert (await http.get("/v1/models", headers=bearer("bob-secret"))).status == 200


# -- item 13: scopes ---------------------------------------------------------------------------

async def test_admin_routes_need_an_admin_key(loaded, data_dir: Path, tmp_path: Path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text(KEYS)
    config = key_config(data_dir, key_file, admin_api_key="ops-admin-secret", api_key="plain-secret")
    async with serving(config, loaded) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            unload = {"model": "no-such-model"}
            for secret in ("alice-secret", "plain-secret", UNNAMED_SECRET):
                refused = await http.post("/admin/models/unload", json=unload, headers=bearer(secret))
                assert refused.status == 403
                assert (await refused.json())["error"]["code"] == "insufficient_scope"
                assert (await http.post("/v1/completions", json=BODY, headers=bearer(secret))).status == 200
            for secret in ("root-secret", "ops-admin-secret"):  # past auth: the route's own 404
                assert (await http.post("/admin/models/unload", json=unload, headers=bearer(secret))).status == 404
            assert (await http.post("/v1/completions", json=BODY, headers=bearer("root-secret"))).status == 200


def _non_loopback_ipv4() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


async def test_without_keys_admin_routes_answer_only_on_loopback(loaded, data_dir: Path):
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    config = Config.from_flat({"parallel": 2, "ctx": 2048, "threads": 2, "data_dir": str(data_dir),
                               "host": "0.0.0.0"})
    async with serving(config, loaded, host="0.0.0.0") as server:
        unload = {"model": "no-such-model"}
        async with aiohttp.ClientSession() as http:
            remote = f"http://{address}:{server.port}"
            refused = await http.post(remote + "/admin/models/unload", json=unload)
            assert refused.status == 403 and (await refused.json())["error"]["code"] == "admin_loopback_only"
            assert (await http.post(remote + "/v1/completions", json=BODY)).status == 200  # inference is open
            local = f"http://127.0.0.1:{server.port}"
            assert (await http.post(local + "/admin/models/unload", json=unload)).status == 404


# -- item 16: metrics and stats ------------------------------------------------------------------

async def test_metrics_and_stats_name_keys_without_key_material(loaded, data_dir: Path, tmp_path: Path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text(KEYS)
    async with serving(key_config(data_dir, key_file), loaded) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            for secret in ("alice-secret", UNNAMED_SECRET, "root-secret"):
                assert (await http.post("/v1/completions", json=BODY, headers=bearer(secret))).status == 200
            metrics = await (await http.get("/metrics")).text()  # public unless metrics_require_key
            digest = hashlib.sha256(UNNAMED_SECRET.encode()).hexdigest()
            assert digest[:8] not in metrics and UNNAMED_SECRET not in metrics
            assert 'localllm_key_requests_total{key="key-3"} 1.0' in metrics  # third key of the file
            assert 'localllm_key_requests_total{key="alice"} 1.0' in metrics
            own = await (await http.get("/v1/stats", headers=bearer("alice-secret"))).json()
            assert set(own["keys"]) == {"alice"}
            everyone = await (await http.get("/v1/stats", headers=bearer("root-secret"))).json()
            assert {"alice", "key-3", "root"} <= set(everyone["keys"])


async def test_metrics_can_require_a_key(loaded, data_dir: Path, tmp_path: Path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text(KEYS)
    async with serving(key_config(data_dir, key_file, metrics_require_key=True), loaded) as server:
        async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
            assert (await http.get("/metrics")).status == 401
            assert (await http.get("/metrics", headers=bearer("alice-secret"))).status == 200
            assert (await http.get("/health")).status == 200
            assert server.app[KEYRING_KEY].enabled
