"""Time to first token and inter-token latency, p50 and p95 over the recent window."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from tui.snapshot import Latency, Snapshot, format_seconds


class LatencyPanel(Static):
    def on_mount(self) -> None:
        self.border_title = "Latency"
        self.border_subtitle = "last 60 s"
        self.watch(self.app, "snapshot", self._show)

    def _show(self, snapshot: Snapshot | None) -> None:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold")
        grid.add_column(justify="right")
        grid.add_column(justify="right")
        grid.add_column(justify="right", style="dim")
        grid.add_row("", "p50", "p95", "base")
        for name, latency in (("TTFT", snapshot.ttft if snapshot else Latency()),
                              ("ITL", snapshot.itl if snapshot else Latency())):
            p95 = Text(format_seconds(latency.p95_s), style="bold red" if latency.is_degraded else "")
            grid.add_row(name, format_seconds(latency.p50_s), p95, format_seconds(latency.baseline_p95_s))
        self.update(grid)
