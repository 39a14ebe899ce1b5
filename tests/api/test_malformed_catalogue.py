"""The operator's models.toml is re-read per request (SIGHUP only reports on it): edited into a
malformed state while the server runs, every route that reads it answers 503 catalogue_invalid
in OpenAI's shape (the path and details go to the log, not to clients), never a 500; a fixed
file is picked up by the next request."""
from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from localllm.models.registry import CatalogueError, load_catalogue
from tests.api.fake_model import api_config, api_server

MALFORMED = {
    "not toml": "[models.x\nfile = ",
    "not utf-8": b"[models.x]\nfile = \"\xff.gguf\"\n",
    "models not a table": "models = 3\n",
    "entry not a table": "[models]\nx = 3\n",
    "file not a string": "[models.x]\nfile = 3\n",
    "files not a table": "[models.x]\nfiles = \"Q4_K_M\"\n",
    "sha256s values not strings": "[models.x]\nfile = \"x.gguf\"\nsha256s = { Q4_K_M = 5 }\n",
    "default_ctx not a number": "[models.x]\nfile = \"x.gguf\"\ndefault_ctx = \"big\"\n",
    "chat_template not a string": "[models.x]\nfile = \"x.gguf\"\nchat_template = 3\n",
}


def write(path: Path, content: str | bytes) -> None:
    path.write_bytes(content.encode() if isinstance(content, str) else content)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_malformed_catalogue_is_a_catalogue_error(tmp_path: Path, case: str):
    write(tmp_path / "models.toml", MALFORMED[case])
    with pytest.raises(CatalogueError):
        load_catalogue(tmp_path / "models.toml")


@pytest.mark.parametrize("case", ["not toml", "file not a string", "models not a table"])
async def test_routes_answer_503_while_the_catalogue_is_malformed(tmp_path: Path, case: str):
    async with api_server(api_config(tmp_path)) as server, \
            aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        write(tmp_path / "models.toml", MALFORMED[case])
        for method, path, body in (("GET", "/v1/models", None), ("POST", "/admin/models/pull", {"model": "x"})):
            response = await http.request(method, path, json=body)
            payload = await response.json()
            assert response.status == 503, payload
            assert payload["error"]["code"] == "catalogue_invalid" and str(tmp_path) not in payload["error"]["message"]
        (tmp_path / "models.toml").unlink()
        assert (await http.get("/v1/models")).status == 200
