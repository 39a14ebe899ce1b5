"""A real `localllm serve` under a fake service manager: sd_notify datagrams on NOTIFY_SOCKET, in
order: STATUS while loading, READY=1 only once the model serves, WATCHDOG=1 pings, RELOADING=1 and
READY=1 around SIGHUP, STOPPING=1 on SIGTERM, exit 0."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.server.test_lifecycle import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


class FakeServiceManager:
    """Collects datagrams on an abstract unix socket, as systemd's NOTIFY_SOCKET does."""

    def __init__(self) -> None:
        self.address = f"@localllm-test-{secrets.token_hex(8)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        """Every assignment received, in order."""

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout_s: float, process: subprocess.Popen) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.messages):
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError(f"timed out; got {self.messages}")
            try:
                self.messages.extend(self.sock.recv(65536).decode().split("\n"))
            except TimeoutError:
                pass


def after(messages: list[str], marker: str, wanted: str) -> bool:
    return marker in messages and wanted in messages[messages.index(marker) + 1:]


def test_ready_after_load_watchdog_pings_reload_and_stopping(data_dir: Path, model_path: Path, tmp_path: Path):
    manager = FakeServiceManager()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCALLLM_", "WATCHDOG_", "JOURNAL_"))}
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "localllm.cli", "serve", "--port", str(port), "--parallel", "2", "--ctx", "1024",
             "--threads", "2", "--data-dir", str(data_dir)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**env, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "1000000"})
    try:
        manager.wait_for(lambda m: "READY=1" in m, 180, process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=10) as response:
            assert response.status == 200  # READY=1 means the model serves
        manager.wait_for(lambda m: after(m, "READY=1", "WATCHDOG=1"), 10, process)
        process.send_signal(signal.SIGHUP)
        manager.wait_for(lambda m: after(m, "RELOADING=1", "READY=1"), 10, process)
        process.send_signal(signal.SIGTERM)
        manager.wait_for(lambda m: "STOPPING=1" in m, 30, process)
        assert process.wait(timeout=60) == 0
    except BaseException:
        process.kill()
        print(log_path.read_text())
        raise
    finally:
        manager.sock.close()
    messages = manager.messages
    ready = messages.index("READY=1")
    assert messages[0] == "STATUS=loading gemma3-270m"  # status first, while the model loads
    assert messages[ready + 1].startswith("STATUS=serving gemma3-270m: 0/2 slots busy")
    assert "WATCHDOG=1" in messages[ready:messages.index("STOPPING=1")]
    assert messages.index("RELOADING=1") > ready
    assert any(m.startswith("MONOTONIC_USEC=") for m in messages)
