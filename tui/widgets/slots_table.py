"""One row per slot: state, request age, tokens so far, reused prefix."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from tui.snapshot import Snapshot

_STATE_STYLES = {"idle": "dim", "prefill": "bold yellow", "decode": "bold green",
                 "busy": "bold"}  # busy: another key's request, details hidden (server/admin_routes.py)
COLUMNS = ("slot", "state", "request", "age", "gen", "cached", "reused")


class SlotsTable(DataTable):
    def on_mount(self) -> None:
        self.border_title = "Slots"
        self.cursor_type = "none"
        self.zebra_stripes = True
        self.add_columns(*COLUMNS)
        self.watch(self.app, "snapshot", self._show)

    def _show(self, snapshot: Snapshot | None) -> None:
        self.clear()
        for slot in (snapshot.get("slots", []) if snapshot else []):
            state = slot.get("state", "?")
            busy = state != "idle"
            self.add_row(
                str(slot.get("slot_id", "?")),
                Text(state, style=_STATE_STYLES.get(state, "")),
                (slot.get("request_id") or "–")[-8:],
                f"{slot.get('age_s', 0):.1f}s" if busy else "–",
                f"{slot.get('num_generated_tokens', 0):,}" if busy else "–",
                f"{slot.get('num_cached_tokens', 0):,}",
                f"{slot.get('num_reused_tokens', 0):,}" if busy else "–",
            )
