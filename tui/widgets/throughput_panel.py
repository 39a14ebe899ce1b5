"""Generation and prompt tokens/sec now, and a chart of generation tokens/sec over the last minutes."""
from __future__ import annotations

from statistics import fmean

from rich.table import Table
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from tui.snapshot import Snapshot


class ThroughputPanel(Vertical):
    def compose(self) -> ComposeResult:
        yield Static(id="rates")
        yield Sparkline([], id="generation-chart", summary_function=fmean)
        yield Static(id="chart-caption")

    def on_mount(self) -> None:
        self.border_title = "Throughput"
        self.watch(self.app, "snapshot", self._show)

    def _show(self, snapshot: Snapshot | None) -> None:
        generation = snapshot.get("generation_tokens_per_s", 0.0) if snapshot else 0.0
        prompt = snapshot.get("prompt_tokens_per_s", 0.0) if snapshot else 0.0
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold")
        grid.add_column(justify="right")
        grid.add_column()
        grid.add_row("gen", f"{generation:,.1f}", "tok/s")
        grid.add_row("prompt", f"{prompt:,.1f}", "tok/s")
        self.query_one("#rates", Static).update(grid)
        history = list(snapshot.generation_history) if snapshot else []
        peak = max(history, default=0.0)
        # A leading 0 pins the chart's floor at zero tokens/sec (Sparkline scales from the data's minimum).
        self.query_one("#generation-chart", Sparkline).data = [0.0, *history] if peak > 0 else []
        minutes = len(history) * self.app.poll_interval_s / 60
        self.query_one("#chart-caption", Static).update(f"last {minutes:.1f} min · peak {peak:,.0f}")

