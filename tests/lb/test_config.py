"""`localllm lb config`: the generated haproxy.cfg says what docs/scaling.md promises, and HAProxy accepts it."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from localllm.cli import main
from localllm.lb.haproxy import Endpoint, LbConfig, LbConfigError, render


def config_text(**changes) -> str:
    return render(LbConfig(replicas=(Endpoint("10.0.0.1", 8080), Endpoint("10.0.0.2", 8080)), **changes))


def directives(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def test_the_config_routes_by_least_connections_and_checks_ready():
    lines = directives(config_text())
    for expected in ("balance leastconn", "option httpchk GET /ready", "http-check expect status 200",
                     "retry-on conn-failure empty-response 503", "retries 3", "option redispatch 1",
                     "option forwardfor", "option http-server-close", "option http-no-delay",
                     "timeout server 600s", "bind 127.0.0.1:8000",
                     "server replica1 10.0.0.1:8080 check", "server replica2 10.0.0.2:8080 check"):
        assert expected in lines, expected
    assert "default-server inter 1000ms fastinter 500ms downinter 1000ms fall 2 rise 2" in lines
    assert not any("http-buffer-request" in line or "shutdown-sessions" in line for line in lines)
    assert not any("Authorization" in line for line in lines)  # passthrough: untouched


def test_strip_removes_the_client_key():
    assert "http-request del-header Authorization" in directives(config_text(api_key_header="strip"))


@pytest.mark.parametrize("text, endpoint", [("127.0.0.1:8080", Endpoint("127.0.0.1", 8080)),
                                            ("[::1]:9000", Endpoint("::1", 9000)),
                                            ("box.lan:80", Endpoint("box.lan", 80))])
def test_endpoints_parse(text: str, endpoint: Endpoint):
    assert Endpoint.parse(text) == endpoint
    assert Endpoint.parse(str(endpoint)) == endpoint


@pytest.mark.parametrize("text", ["127.0.0.1", "host:0", "host:70000", ":8080", "::1:8080", "host:http"])
def test_bad_replicas_are_refused_with_their_name(text: str):
    with pytest.raises(LbConfigError, match="replica"):
        Endpoint.parse(text)


def test_options_are_checked():
    with pytest.raises(LbConfigError, match="at least one"):
        LbConfig(replicas=())
    with pytest.raises(LbConfigError, match="twice"):
        LbConfig(replicas=(Endpoint("a", 1), Endpoint("a", 1)))
    with pytest.raises(LbConfigError, match="api_key_header"):
        LbConfig(replicas=(Endpoint("a", 1),), api_key_header="rewrite")


def test_cli_prints_and_writes(capsys, tmp_path: Path):
    assert main(["lb", "config", "--replica", "127.0.0.1:8081", "--replica", "127.0.0.1:8082",
                 "--bind", ":9000"]) == 0
    printed = capsys.readouterr().out
    assert "bind :9000" in printed and "server replica2 127.0.0.1:8082 check" in printed
    target = tmp_path / "haproxy.cfg"
    assert main(["lb", "config", "--replica", "127.0.0.1:8081", "-o", str(target)]) == 0
    assert "server replica1 127.0.0.1:8081 check" in target.read_text()
    assert main(["lb", "config", "--replica", "nope"]) == 2
    assert "localllm lb: replica 'nope'" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (.ci/run installs it)")
@pytest.mark.parametrize("mode", ["passthrough", "strip"])
def test_haproxy_accepts_the_config(tmp_path: Path, mode: str):
    path = tmp_path / "haproxy.cfg"
    path.write_text(render(LbConfig(replicas=(Endpoint("127.0.0.1", 8081), Endpoint("::1", 8082)),
                                    api_key_header=mode)))
    result = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout + result.stderr
