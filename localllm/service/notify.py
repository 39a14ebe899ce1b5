"""sd_notify without libsystemd: datagrams to $NOTIFY_SOCKET, and the engine-driven watchdog.

The protocol (sd_notify(3)): newline-separated `KEY=VALUE` assignments in one datagram to
the unix socket named by NOTIFY_SOCKET; a name starting with '@' is an abstract socket.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Protocol

from localllm.types import EngineStats

log = logging.getLogger(__name__)


class Notify(Protocol):
    def notify(self, *assignments: str) -> bool: ...


class Notifier:
    """Sends sd_notify messages; never raises (a gone service manager must not stop serving)."""

    def __init__(self, address: str) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Notifier | None:
        """A notifier for $NOTIFY_SOCKET, or None when not run by systemd (Type=notify)."""
        address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
        if not address or not (address.startswith(("/", "@"))):
            return None
        return cls(address)

    def notify(self, *assignments: str) -> bool:
        """Sends one datagram, e.g. notify("READY=1", "STATUS=serving"). True when sent."""
        message = "\n".join(assignments).encode()
        try:
            self._sock.sendto(message, self.address)
            return True
        except OSError as exc:
            log.warning("sd_notify %r failed: %s", assignments, exc)
            return False

    def close(self) -> None:
        self._sock.close()


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    """WatchdogSec= as systemd passes it (WATCHDOG_USEC, for WATCHDOG_PID if set), or None."""
    env = os.environ if environ is None else environ
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were started by a wrapper)
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class Watchdog:
    """Pings WATCHDOG=1 every half interval while the engine loop is alive.

    Alive means the engine's last heartbeat (`EngineStats.loop_heartbeat_s`, refreshed at
    least every 0.5 s when idle and after every decode step) is younger than the interval.
    While no engine exists yet (`stats_provider` returns None) it pings as long as
    `starting()` says the model is still loading, so a slow load is not taken for a hang
    (TimeoutStartSec= bounds the load). A stalled or stopped engine, or a failed load,
    stops the pings and systemd restarts the service."""

    def __init__(
        self,
        interval_s: float,
        stats_provider: Callable[[], EngineStats | None],
        *,
        starting: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self._stats = stats_provider
        self._starting = starting
        self._clock = clock

    def is_alive(self) -> bool:
        """Whether the next ping may be sent. Reads a snapshot only; changes nothing."""
        stats = self._stats()
        if stats is None:
            return self._starting()
        return self._clock() - stats.loop_heartbeat_s < self.interval_s

    async def run(self, notifier: Notify) -> None:
        """Pings until cancelled."""
        while True:
            if self.is_alive():
                notifier.notify("WATCHDOG=1")
            await asyncio.sleep(self.interval_s / 2)


def status_text(model: str, stats: EngineStats | None, *, error: str | None = None,
                alive: bool = True) -> str:
    """The STATUS= line systemctl status shows: model and slot state."""
    if error:
        return f"model {model} failed to load: {error}"[:400]
    if stats is None:
        return f"loading {model}"
    if not alive:
        return f"{stats.model}: engine loop stalled"
    return (f"serving {stats.model}: {stats.num_busy_slots}/{stats.num_slots} slots busy, "
            f"{stats.num_waiting} waiting")
