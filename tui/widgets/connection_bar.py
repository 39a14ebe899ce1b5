"""One line at the top of every screen: which server, and whether it answers."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.messages import Connection
from tui.snapshot import Snapshot

_ICONS = {"connected": "●", "connecting": "◌", "unreachable": "✖", "unauthorized": "✖", "failing": "▲"}


class ConnectionBar(Static):
    def on_mount(self) -> None:
        self.watch(self.app, "connection", self._show_connection)
        self.watch(self.app, "snapshot", self._show_snapshot)

    def _show_connection(self, connection: Connection) -> None:
        for state in _ICONS:
            self.set_class(connection.state == state, f"-{state}")
        self._render_bar()

    def _show_snapshot(self, snapshot: Snapshot | None) -> None:
        self._render_bar()

    def _render_bar(self) -> None:
        connection: Connection = self.app.connection
        snapshot: Snapshot | None = self.app.snapshot
        text = Text(f" {_ICONS.get(connection.state, '?')} ")
        if connection.state == "connected":
            text.append(f"{connection.url}")
            if snapshot is not None:
                text.append(f"  model {snapshot.get('model', '?')} · {snapshot.get('num_slots')} slots")
        elif connection.state == "connecting":
            text.append(f"connecting to {connection.url} …")
        else:
            label = {"unreachable": "server unreachable", "unauthorized": "API key rejected",
                     "failing": "server error"}[connection.state]
            text.append(f"{label}: {connection.url}")
            if connection.retry_in_s is not None:
                text.append(f" · retrying in {connection.retry_in_s:.0f} s")
            text.append(f"\n   {connection.detail}")
        self.update(text)
