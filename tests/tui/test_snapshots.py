"""Every screen at 80x24 with fixed data (a recorded /v1/stats, synthetic /metrics): no server."""
from __future__ import annotations

import copy

from tests.tui.conftest import FakeClient, recorded_stats, wait_for
from tui.app import LocalLLMApp
from tui.messages import Connection
from tui.prometheus import parse
from tui.screens.chat import ChatScreen, ReplyStats
from tui.snapshot import Snapshot, Tracker
from tui.widgets.chat_message import ChatMessage

SIZE = (80, 24)
CONNECTED = Connection("connected", FakeClient.url)
TTFT = "localllm_time_to_first_token_seconds"
ITL = "localllm_inter_token_latency_seconds"


def metrics_text(ttft: dict[float, int], itl: dict[float, int], ok: int, failed: int = 0) -> str:
    """Prometheus text with the two latency histograms (observations per bucket) and request counters."""
    lines = []
    for name, observations in ((TTFT, ttft), (ITL, itl)):
        cumulative = 0
        for le in (0.01, 0.02, 0.04, 0.1, 0.25, 0.5, 1.0):
            cumulative += observations.get(le, 0)
            lines.append(f'{name}_bucket{{le="{le}"}} {cumulative}.0')
        lines += [f'{name}_bucket{{le="+Inf"}} {cumulative}.0', f"{name}_count {cumulative}.0",
                  f"{name}_sum {sum(le * n for le, n in observations.items())}"]
    lines.append(f'localllm_requests_total{{endpoint="chat.completion",status="ok"}} {ok}.0')
    if failed:
        lines.append(f'localllm_errors_total{{type="server_error",status="500"}} {failed}.0')
    return "\n".join(lines) + "\n"


def busy_snapshot() -> Snapshot:
    """Two minutes of polls with a sawtooth of generation rates, then a second scrape 30 s later."""
    tracker = Tracker()
    stats = recorded_stats()
    for second in range(120):
        tracker.update(dict(stats, generation_tokens_per_s=float(10 * (second % 6))), None, float(second))
    tracker.update(stats, parse(metrics_text({0.1: 4}, {0.02: 200, 0.04: 20}, ok=4)), 120.0)
    return tracker.update(stats, parse(metrics_text({0.1: 6, 0.25: 1}, {0.02: 300, 0.04: 40}, ok=7)), 150.0)


def alerting_snapshot() -> Snapshot:
    """A GPU box in trouble: slow tokens lately, 1 in 5 responses failing, GPU memory 97% full."""
    stats = copy.deepcopy(recorded_stats())
    stats["host"]["gpus"] = [{"index": 0, "name": "NVIDIA RTX 4090", "utilization_percent": 88.0,
                              "memory_used_bytes": 23_300_000_000, "memory_total_bytes": 24_000_000_000}]
    stats["host"]["gpu_status"] = "1 NVIDIA GPU"
    tracker = Tracker()
    tracker.update(stats, parse(metrics_text({0.1: 40}, {0.02: 4000}, ok=40)), 0.0)
    return tracker.update(stats, parse(metrics_text({0.1: 44}, {0.02: 4000, 0.5: 40}, ok=44, failed=1)), 30.0)


async def test_dashboard_dark(snapshot):
    app = LocalLLMApp(FakeClient(), poll=False)
    async with app.run_test(size=SIZE) as pilot:
        app.connection, app.snapshot = CONNECTED, busy_snapshot()
        await pilot.pause()
        assert "gen    55.8 tok/s" in snapshot_text(app)  # the recorded rate, as the user reads it
        snapshot(app, "dashboard-dark")


async def test_dashboard_light(snapshot):
    app = LocalLLMApp(FakeClient(), poll=False, dark=False)
    async with app.run_test(size=SIZE) as pilot:
        app.connection, app.snapshot = CONNECTED, busy_snapshot()
        await pilot.pause()
        assert app.theme == "textual-light"
        snapshot(app, "dashboard-light")


async def test_dashboard_alerts_and_gpu(snapshot):
    app = LocalLLMApp(FakeClient(), poll=False)
    async with app.run_test(size=SIZE) as pilot:
        app.connection, app.snapshot = CONNECTED, alerting_snapshot()
        await pilot.pause()
        text = snapshot_text(app)
        assert "ITL p95" in text and "errors 20.0%" in text and "GPU0 memory 97%" in text
        snapshot(app, "dashboard-alerts")


async def test_dashboard_server_unreachable(snapshot):
    app = LocalLLMApp(FakeClient(), poll=False)
    async with app.run_test(size=SIZE) as pilot:
        app.connection = Connection("unreachable", FakeClient.url, "cannot connect (Connection refused)", 4.0)
        await pilot.pause()
        assert "server unreachable" in snapshot_text(app)
        snapshot(app, "dashboard-unreachable")


async def test_chat_screen(snapshot):
    app = LocalLLMApp(FakeClient(), poll=False)
    async with app.run_test(size=SIZE) as pilot:
        app.connection, app.snapshot = CONNECTED, busy_snapshot()
        await pilot.press("f3")
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        await wait_for(pilot, lambda: screen.selected_model() == "gemma3-270m", "the model in the picker")
        await screen.query_one("#conversation").mount_all([
            ChatMessage("user", "What is the capital of France?"),
            ChatMessage("assistant", "The capital of France is Paris."),
        ])
        stats = ReplyStats(started_s=0.0, first_token_s=0.08, last_token_s=0.38, num_chunks=8,
                           num_completion_tokens=8)
        screen._show_stats(stats, "done (stop)")
        await pilot.pause()
        assert "TTFT 80 ms" in snapshot_text(app) and "23.3 tok/s" in snapshot_text(app)
        snapshot(app, "chat")


async def test_models_screen_with_plan(snapshot):
    app = LocalLLMApp(FakeClient(), poll=False)
    async with app.run_test(size=SIZE) as pilot:
        app.connection = CONNECTED
        await pilot.press("f4")
        await wait_for(pilot, lambda: "gemma3-270m" in snapshot_text(app), "the served model listed")
        app.screen.query_one("#models-table").focus()
        await pilot.press("v")
        await wait_for(pilot, lambda: "fits:" in snapshot_text(app), "the memory plan")
        assert "Load" not in snapshot_text(app).splitlines()[-1]  # no load route in /openapi.json: no key
        snapshot(app, "models")


async def test_models_screen_offers_load_only_when_the_server_lists_it():
    routes = {"/v1/models", "/admin/models/load", "/admin/models/unload"}
    app = LocalLLMApp(FakeClient(routes), poll=False)
    async with app.run_test(size=SIZE) as pilot:
        app.connection = CONNECTED
        await pilot.press("f4")
        await wait_for(pilot, lambda: "Load" in snapshot_text(app).splitlines()[-1], "a Load key in the footer")
        assert "Unload" in snapshot_text(app).splitlines()[-1]


async def test_help_screen(snapshot):
    app = LocalLLMApp(FakeClient(), poll=False)
    async with app.run_test(size=SIZE) as pilot:
        app.connection, app.snapshot = CONNECTED, busy_snapshot()
        await pilot.press("f1")
        await pilot.pause()
        snapshot(app, "help")
        await pilot.press("escape")
        await pilot.pause()
        assert "Throughput" in snapshot_text(app)


def snapshot_text(app: LocalLLMApp) -> str:
    from tests.tui.conftest import screen_text

    return screen_text(app)
