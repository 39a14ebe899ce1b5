"""`localllm serve` as a real process: SIGTERM during a stream lets the stream finish, exit 0."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text("ops:first-key\n")
    return path


@pytest.fixture
def served(data_dir: Path, model_path: Path, key_file: Path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "localllm.cli", "serve", "--port", str(port), "--parallel", "2", "--ctx", "2048",
         "--threads", "2", "--data-dir", str(data_dir), "--drain-timeout", "60"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "LOCALLLM_API_KEY_FILE": str(key_file)},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/ready", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        raise AssertionError("server did not become ready:\n" + process.communicate()[0])
    yield process, url
    if process.poll() is None:
        process.kill()
        process.wait()


def test_sigterm_during_a_stream_lets_it_finish_and_exits_zero(served):
    process, url = served
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 64, "stream": True, "temperature": 0,
                       "ignore_eos": True}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, headers={
        "Content-Type": "application/json", "Authorization": "Bearer first-key"})
    with urllib.request.urlopen(request, timeout=120) as response:
        first = response.readline()
        assert first.startswith(b"data: ")
        process.send_signal(signal.SIGTERM)
        rest = response.read().decode()
    events = [line[len("data: "):] for line in (first.decode() + rest).splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert sum(1 for c in chunks if c["choices"][0]["text"]) >= 60  # the whole completion arrived
    assert process.wait(timeout=60) == 0
    with pytest.raises(OSError):  # and it no longer accepts connections
        urllib.request.urlopen(url + "/health", timeout=2)


def status_with_key(url: str, key: str) -> int:
    request = urllib.request.Request(url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_sighup_reloads_the_api_keys(served, key_file: Path):
    process, url = served
    assert status_with_key(url, "first-key") == 200
    assert status_with_key(url, "second-key") == 401
    key_file.write_text("ops:second-key\n")
    process.send_signal(signal.SIGHUP)
    for _ in range(50):
        if status_with_key(url, "second-key") == 200:
            break
        time.sleep(0.1)
    assert status_with_key(url, "second-key") == 200
    assert status_with_key(url, "first-key") == 401  # removed keys stop working
    assert process.poll() is None  # and the server kept running
