"""One model split across two "machines": two network namespaces with their own addresses,
llama.cpp's rpc-server in each, `localllm serve --rpc A,B` on the host. Greedy output equals
the single-machine output; with one link cut the load fails with a clear error and the server
stays up.

Needs root (ip netns), a llama-cpp-python built with -DGGML_RPC=ON and llama.cpp's rpc-server:
scripts/install.sh builds both (`.venv/bin/ggml-rpc-server`); $LOCALLLM_RPC_SERVER or the PATH
also work. It skips, saying which is missing, otherwise.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.server.test_lifecycle import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RPC_PORT = 50052
PROMPT = "The capital of France is Paris. The capital of Italy is"
MAX_TOKENS = 24


def rpc_server_binary() -> str | None:
    """$LOCALLLM_RPC_SERVER, the one scripts/install.sh built into the venv, or one on the PATH."""
    beside = Path(sys.executable).parent / "ggml-rpc-server"
    return (os.environ.get("LOCALLLM_RPC_SERVER") or (str(beside) if beside.is_file() else None)
            or shutil.which("ggml-rpc-server") or shutil.which("rpc-server"))


def missing() -> str | None:
    """Why this test cannot run here, or None."""
    from localllm.engine.llama_backend.rpc import rpc_available

    if not rpc_available():
        return "llama_cpp was built without the RPC backend (GGML_RPC=OFF); see docs/scaling.md"
    if rpc_server_binary() is None:
        return "no rpc-server: put ggml-rpc-server on the PATH or set LOCALLLM_RPC_SERVER"
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "network namespaces need root and iproute2"
    return None


@pytest.fixture(scope="module")
def rpc_hosts():
    """Two namespaces, each an rpc-server on its own address; yields {namespace: (host veth, address)}."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    tag = os.getpid() % 10000
    hosts, processes = {}, []
    try:
        for n in (1, 2):
            ns, veth, address = f"llrpc{n}-{tag}", f"llr{n}h{tag}", f"10.231.{n}.2"
            for command in (f"ip netns add {ns}", f"ip link add {veth} type veth peer name llr{n}n{tag}",
                            f"ip link set llr{n}n{tag} netns {ns}", f"ip addr add 10.231.{n}.1/24 dev {veth}",
                            f"ip link set {veth} up", f"ip -n {ns} addr add {address}/24 dev llr{n}n{tag}",
                            f"ip -n {ns} link set llr{n}n{tag} up", f"ip -n {ns} link set lo up"):
                subprocess.run(command.split(), check=True, capture_output=True)
            hosts[ns] = (veth, address)
            processes.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, rpc_server_binary(), "-H", address, "-p", str(RPC_PORT), "-t", "1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _, address in hosts.values():
            wait_for(lambda: connects(address, RPC_PORT), 30, f"rpc-server on {address}")
        yield hosts
    finally:
        for process in processes:
            process.kill()
            process.wait()
        for ns in hosts:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_for(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def ready_status(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url + "/ready", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return 0, {}


def serve(data_dir: Path, tmp_path: Path, name: str, *extra: str) -> tuple[subprocess.Popen, str, Path]:
    port, log_path = free_port(), tmp_path / f"{name}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "localllm.cli", "serve", "--port", str(port), "--parallel", "1", "--ctx", "1024",
         "--threads", "1", "--data-dir", str(data_dir), *extra],
        cwd=ROOT, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
        # own response cache: the greedy answer must be computed, not replayed from the other server
        env={**os.environ, "PYTHONUNBUFFERED": "1", "LOCALLLM_CACHE_DIR": str(tmp_path / f"cache-{name}")})
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: ready_status(url)[0] in (200, 503) and ready_status(url)[1].get("status") != "loading",
             180, f"{name} to load or fail")
    return process, url, log_path


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def complete(url: str) -> tuple[str, float]:
    body = json.dumps({"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=180) as response:
        text = json.loads(response.read())["choices"][0]["text"]
    return text, time.monotonic() - started


def test_split_over_two_rpc_servers_matches_one_machine_and_survives_a_cut_link(rpc_hosts, data_dir, model_path,
                                                                                 tmp_path):
    endpoints = ",".join(f"{address}:{RPC_PORT}" for _, address in rpc_hosts.values())
    local, local_url, _ = serve(data_dir, tmp_path, "local")
    try:
        assert ready_status(local_url)[0] == 200
        local_text, local_s = complete(local_url)
    finally:
        local.terminate()
        local.wait(60)

    split, split_url, split_log = serve(data_dir, tmp_path, "split", "--rpc", endpoints)
    try:
        assert ready_status(split_url)[0] == 200, split_log.read_text()
        split_text, split_s = complete(split_url)
        log_text = split_log.read_text()
        stats, plan = get_json(split_url + "/v1/stats"), get_json(split_url + "/v1/plan")
    finally:
        split.terminate()
        split.wait(60)
    assert split_text == local_text  # greedy: same tokens whether the layers are here or over there
    layer_line = next(line for line in log_text.splitlines() if "rpc: layers per device" in line)
    counts = dict(item.rsplit(" ", 1) for item in layer_line.split("rpc: layers per device: ")[1].split(", "))
    assert [k.split("@")[1] for k in counts if k != "CPU"] == endpoints.split(","), layer_line
    assert all(int(v) > 0 for k, v in counts.items() if k != "CPU"), layer_line  # both hold layers
    # The split the plan predicts is the one llama.cpp made, and both endpoints show it.
    assert plan["layer_split"] == stats["layer_split"] == {k: int(v) for k, v in counts.items()}, (plan, stats)
    assert sum(plan["layer_split"].values()) == 19  # 18 blocks + the output layer
    assert [d["name"] for d in plan["devices"]] == [k for k in counts if k != "CPU"]
    assert all(d["free_bytes"] > 0 for d in plan["devices"]) and "layers per device" in plan["explanation"]
    print(f"\nrpc: {MAX_TOKENS} greedy tokens: one machine {local_s:.2f} s, split over 2 rpc-servers "
          f"{split_s:.2f} s; {layer_line.split('rpc: ')[-1]}")

    cut_veth, cut_address = next(iter(rpc_hosts.values()))
    subprocess.run(["ip", "link", "set", cut_veth, "down"], check=True)
    try:
        broken, broken_url, broken_log = serve(data_dir, tmp_path, "cut", "--rpc", endpoints)
        try:
            status, body = ready_status(broken_url)
            assert status == 503 and body["status"] == "failed", body
            assert f"RPC server {cut_address}:{RPC_PORT} is unreachable" in body["error"], body
            with urllib.request.urlopen(broken_url + "/health", timeout=5) as response:
                assert response.status == 200  # the process stays up and says why it cannot serve
            assert broken.poll() is None
        finally:
            broken.terminate()
            broken.wait(60)
    finally:
        subprocess.run(["ip", "link", "set", cut_veth, "up"], check=True)
