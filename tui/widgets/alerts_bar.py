"""One line of alerts: slow p95 latency, errors above 1%, a GPU nearly out of memory."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.snapshot import Snapshot


class AlertsBar(Static):
    def on_mount(self) -> None:
        self.watch(self.app, "snapshot", self._show)

    def _show(self, snapshot: Snapshot | None) -> None:
        alerts = snapshot.alerts if snapshot is not None else ()
        self.set_class(bool(alerts), "-alerting")
        if alerts:
            self.update(Text(" ⚠ " + " | ".join(a.message for a in alerts)))
        else:
            self.update(Text(" ✓ no alerts" if snapshot is not None else " waiting for the first stats …"))
