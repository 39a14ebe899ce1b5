"""Throughput, latency, load, slots and memory at a glance."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer

from tui.widgets.alerts_bar import AlertsBar
from tui.widgets.connection_bar import ConnectionBar
from tui.widgets.latency_panel import LatencyPanel
from tui.widgets.load_panel import LoadPanel
from tui.widgets.memory_panel import MemoryPanel
from tui.widgets.slots_table import SlotsTable
from tui.widgets.throughput_panel import ThroughputPanel


class DashboardScreen(Screen):
    CSS_PATH = "../styles/dashboard.tcss"

    def compose(self) -> ComposeResult:
        yield ConnectionBar()
        yield AlertsBar()
        with Horizontal(id="top-row"):
            yield ThroughputPanel()
            yield LatencyPanel()
            yield LoadPanel()
        with Horizontal(id="bottom-row"):
            yield SlotsTable()
            yield MemoryPanel()
        yield Footer()
