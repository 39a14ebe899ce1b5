"""Messages the app's workers post (past tense), and the small state objects they carry."""
from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from tui.snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class Connection:
    """Where the app stands with the server."""

    state: str
    """"connecting", "connected", "unreachable", "unauthorized" or "failing"."""
    url: str
    detail: str = ""
    retry_in_s: float | None = None

    @property
    def is_up(self) -> bool:
        return self.state == "connected"


class StatsUpdated(Message):
    """A poll of /v1/stats and /metrics succeeded."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class ConnectionChanged(Message):
    """The connection state changed (or an outage's retry countdown moved on)."""

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self.connection = connection
