"""TUI test helpers: render the screen as text/SVG, compare with stored snapshots, wait on the UI."""
from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import Input

DATA = Path(__file__).parent / "data"
SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("TUI_SNAPSHOT_UPDATE") == "1"


def recorded_stats() -> dict[str, Any]:
    """A /v1/stats answer recorded from the bundled model while one request streamed."""
    return json.loads((DATA / "stats.json").read_text())


def recorded_metrics() -> str:
    return (DATA / "metrics.txt").read_text()


def _render(app: App, export: Callable[[Console], str]) -> str:
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), record=True,
                      force_terminal=True, color_system="truecolor", legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return export(console)


def screen_text(app: App) -> str:
    """What a user would read on the terminal right now."""
    return _render(app, lambda c: c.export_text())


def screen_svg(app: App) -> str:
    return _render(app, lambda c: c.export_svg(title="localllm"))


async def wait_for(pilot: Pilot, condition: Callable[[], bool], what: str, tries: int = 300,
                   step_s: float = 0.05) -> None:
    """Lets the app run until `condition()` holds; fails, saying `what`, after `tries` steps."""
    for _ in range(tries):
        if condition():
            return
        await pilot.pause(step_s)
    raise AssertionError(f"never saw: {what}\n--- screen ---\n{screen_text(pilot.app)}")


@pytest.fixture()
def snapshot() -> Callable[[App, str], None]:
    """Compares the screen (text and SVG, so colours count too) with tests/tui/snapshots/NAME.*.

    TUI_SNAPSHOT_UPDATE=1 rewrites them; a mismatch leaves NAME.actual.* beside them to look at."""

    def compare(app: App, name: str) -> None:
        for input_ in app.screen.query(Input):
            input_.cursor_blink = False
        mismatches = []
        for suffix, rendered in (("txt", screen_text(app)), ("svg", screen_svg(app))):
            stored = SNAPSHOTS / f"{name}.{suffix}"
            actual = SNAPSHOTS / f"{name}.actual.{suffix}"
            if UPDATE:
                SNAPSHOTS.mkdir(exist_ok=True)
                stored.write_text(rendered)
                actual.unlink(missing_ok=True)
            elif not stored.exists() or stored.read_text() != rendered:
                actual.write_text(rendered)
                mismatches.append(str(stored))
            else:
                actual.unlink(missing_ok=True)
        assert not mismatches, f"screen differs from {mismatches} (see *.actual.*; TUI_SNAPSHOT_UPDATE=1 accepts)"

    return compare


class FakeClient:
    """Stands in for tui.client.Client in snapshot tests: canned answers, no network."""

    url = "http://127.0.0.1:8080"

    def __init__(self, routes: set[str] | None = None) -> None:
        self._routes = routes or {"/v1/models", "/v1/plan", "/admin/models/pull"}

    async def models(self) -> list[dict[str, Any]]:
        return [{"id": "gemma3-270m", "object": "model", "owned_by": "localllm"}]

    async def routes(self) -> set[str]:
        return self._routes

    async def plan(self, model: str) -> dict[str, Any]:
        return json.loads((DATA / "plan.json").read_text())

    async def close(self) -> None:
        pass
