"""Several API keys from a key file, per-key rate limits with headers, per-key usage, CORS."""
from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from localllm.config import Config
from tests.serving import served

pytestmark = pytest.mark.integration
ALICE = {"Authorization": "Bearer alice-secret"}
BOB = {"Authorization": "Bearer bob-secret"}
BODY = {"prompt": "Hi", "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
async def base_url(data_dir: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text("# team keys\nalice:alice-secret\nbob:bob-secret\n")
    config = Config.from_flat({"parallel": 2, "ctx": 2048, "threads": 2, "data_dir": str(data_dir),
                               "api_key_file": str(key_file), "rate_limit_rpm": 3,
                               "cors_origins": "http://app.example"})
    async with served(config) as server:
        yield str(server.make_url("/"))


async def test_each_key_has_its_own_request_budget(base_url: str):
    async with aiohttp.ClientSession(base_url=base_url) as http:
        for remaining in (2, 1, 0):
            response = await http.post("/v1/completions", json=BODY, headers=ALICE)
            assert response.status == 200
            assert response.headers["x-ratelimit-limit-requests"] == "3"
            assert response.headers["x-ratelimit-remaining-requests"] == str(remaining)
        limited = await http.post("/v1/completions", json=BODY, headers=ALICE)
        assert limited.status == 429
        assert int(limited.headers["Retry-After"]) >= 1
        assert (await limited.json())["error"]["code"] == "rate_limit_exceeded"
        streamed = await http.post("/v1/completions", json={**BODY, "stream": True}, headers=BOB)
        assert streamed.status == 200 and streamed.headers["x-ratelimit-remaining-requests"] == "2"
        await streamed.read()
        assert (await http.get("/v1/models", headers=ALICE)).status == 200  # reads are not limited
        stats = await (await http.get("/v1/stats", headers=ALICE)).json()  # each key sees only its own usage
        alice_tokens = stats["keys"]["alice"]["tokens"]
        assert stats["keys"] == {"alice": {"requests": 3, "tokens": alice_tokens, "rate_limited": 1, "protocols": {
            "openai.completions": {"requests": 3, "tokens": alice_tokens}}}}
        assert alice_tokens > 0
        stats = await (await http.get("/v1/stats", headers=BOB)).json()
        bob_tokens = stats["keys"]["bob"]["tokens"]
        assert stats["keys"] == {"bob": {"requests": 1, "tokens": bob_tokens, "rate_limited": 0, "protocols": {
            "openai.completions": {"requests": 1, "tokens": bob_tokens}}}}
        metrics = await (await http.get("/metrics")).text()
        assert 'localllm_key_rate_limited_total{key="alice"} 1.0' in metrics


async def test_unknown_key_is_refused(base_url: str):
    async with aiohttp.ClientSession(base_url=base_url) as http:
        response = await http.post("/v1/completions", json=BODY, headers={"Authorization": "Bearer mallory"})
        assert response.status == 401


async def test_cors_only_for_the_configured_origin(base_url: str):
    async with aiohttp.ClientSession(base_url=base_url) as http:
        preflight = await http.options("/v1/chat/completions", headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "POST"})
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "http://app.example"
        other = await http.get("/v1/models", headers={**BOB, "Origin": "http://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers
