"""sd_notify over a real unix datagram socket, and the watchdog that follows the engine's heartbeat."""
from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from localllm.service.notify import Notifier, Watchdog, status_text, watchdog_interval_s


def bound_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + address[1:] if address.startswith("@") else address)
    sock.settimeout(5)
    return sock


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notifier_sends_one_datagram_per_call(tmp_path: Path, abstract: bool):
    address = f"@localllm-test-{secrets.token_hex(6)}" if abstract else str(tmp_path / "notify.sock")
    with bound_socket(address) as sock:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
        assert notifier is not None
        assert notifier.notify("READY=1", "STATUS=serving")
        assert notifier.notify("WATCHDOG=1")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
        assert sock.recv(4096) == b"WATCHDOG=1"
        notifier.close()


def test_notifier_absent_without_socket_and_harmless_when_the_manager_is_gone(tmp_path: Path):
    assert Notifier.from_env({}) is None
    assert Notifier.from_env({"NOTIFY_SOCKET": "relative/path"}) is None
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert notifier.notify("READY=1") is False  # logged, never raised


def test_watchdog_interval_from_the_environment():
    assert watchdog_interval_s({"WATCHDOG_USEC": "1000000"}) == 1.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}) == 1.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None


def stats_at(heartbeat_s: float) -> SimpleNamespace:
    return SimpleNamespace(loop_heartbeat_s=heartbeat_s)


def test_alive_only_while_the_heartbeat_is_younger_than_the_interval():
    now = [100.0]
    watchdog = Watchdog(1.0, lambda: stats_at(99.5), clock=lambda: now[0])
    assert watchdog.is_alive()
    now[0] = 101.0
    assert not watchdog.is_alive()


def test_before_the_engine_exists_it_pings_only_while_starting():
    starting = [True]
    watchdog = Watchdog(1.0, lambda: None, starting=lambda: starting[0])
    assert watchdog.is_alive()
    starting[0] = False  # the load failed: stop pinging, systemd restarts us
    assert not watchdog.is_alive()


class EngineLoop:
    """A heartbeat that advances with the clock until frozen (the engine loop stalls)."""

    def __init__(self) -> None:
        self.frozen_at: float | None = None

    def stats(self) -> SimpleNamespace:
        return stats_at(self.frozen_at if self.frozen_at is not None else time.monotonic())


class Recorder:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def notify(self, *assignments: str) -> bool:
        self.messages.extend(assignments)
        return True

    @property
    def num_pings(self) -> int:
        return self.messages.count("WATCHDOG=1")


async def wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_pings_stop_when_the_engine_loop_stalls_and_resume_when_it_recovers():
    interval_s = 0.2
    loop, recorder = EngineLoop(), Recorder()
    task = asyncio.create_task(Watchdog(interval_s, loop.stats).run(recorder))
    try:
        await wait_for(lambda: recorder.num_pings >= 2)  # a live loop gets pinged
        loop.frozen_at = time.monotonic()
        await asyncio.sleep(interval_s * 1.5)  # the frozen heartbeat ages past the interval
        num_pings = recorder.num_pings
        await asyncio.sleep(interval_s * 3)
        assert recorder.num_pings == num_pings  # no ping within 3 intervals (6 ping periods)
        loop.frozen_at = None
        await wait_for(lambda: recorder.num_pings > num_pings)
    finally:
        task.cancel()


def test_status_text_names_the_model_and_slots():
    stats = SimpleNamespace(model="gemma3-270m", num_busy_slots=1, num_slots=2, num_waiting=3)
    assert status_text("gemma3-270m", None) == "loading gemma3-270m"
    assert status_text("gemma3-270m", stats) == "serving gemma3-270m: 1/2 slots busy, 3 waiting"
    assert "stalled" in status_text("gemma3-270m", stats, alive=False)
    assert "failed to load: no file" in status_text("gemma3-270m", None, error="no file")
