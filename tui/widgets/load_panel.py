"""Requests running and waiting, KV cache usage and the prefix-cache hit rate."""
from __future__ import annotations

from rich.table import Table
from textual.widgets import Static

from tui.snapshot import Snapshot


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _compact(count: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if count >= 10 * size:
            return f"{count / size:.0f}{unit}"
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


class LoadPanel(Static):
    def on_mount(self) -> None:
        self.border_title = "Load"
        self.watch(self.app, "snapshot", self._show)

    def _show(self, snapshot: Snapshot | None) -> None:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold")
        grid.add_column()
        if snapshot is None:
            grid.add_row("no data", "")
        else:
            grid.add_row("running", f"{snapshot.get('num_busy_slots')}/{snapshot.get('num_slots')}")
            grid.add_row("waiting", f"{snapshot.get('num_waiting')}")
            grid.add_row("KV used", f"{_percent(snapshot.kv_usage)} of {_compact(snapshot.get('num_kv_cells_total'))}")
            grid.add_row("prefix", f"{_percent(snapshot.prefix_hit_rate)} hit")  # the prefix cache's hit rate
            grid.add_row("admitted", _compact(snapshot.get("num_admitted_total")))
        self.update(grid)
