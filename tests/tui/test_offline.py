"""No model needed: the pure figures, the import boundary, and an outage followed by reconnection."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from aiohttp import web

from tests.tui.conftest import recorded_metrics, recorded_stats, screen_text, wait_for
from tui.app import LocalLLMApp
from tui.client import Client
from tui.prometheus import Histogram, parse
from tui.snapshot import Tracker

ROOT = Path(__file__).resolve().parents[2]


def test_histogram_quantiles_interpolate_inside_buckets():
    histogram = Histogram(((0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)), 100.0, 10.0)
    assert histogram.quantile(0.5) == 0.1
    assert abs(histogram.quantile(0.75) - 0.15) < 1e-9
    assert Histogram().quantile(0.5) is None
    scrape = parse(recorded_metrics())
    ttft = scrape.histogram("localllm_time_to_first_token_seconds")
    assert ttft.count == 1 and 0.05 < ttft.quantile(0.5) <= 0.1


def test_recent_window_is_the_difference_of_two_scrapes_and_alerts_fire():
    earlier = "\n".join(['lat_bucket{le="0.1"} 1000', 'lat_bucket{le="1.0"} 1000', 'lat_bucket{le="+Inf"} 1000',
                         "lat_count 1000", 'localllm_requests_total{endpoint="chat",status="ok"} 100'])
    tracker = Tracker()
    quiet = tracker.update(recorded_stats(), parse(earlier.replace("lat", "localllm_inter_token_latency_seconds")), 0.0)
    assert quiet.alerts == () and quiet.error_rate == 0.0
    later = earlier.replace('1.0"} 1000', '1.0"} 1020').replace('Inf"} 1000', 'Inf"} 1020').replace("count 1000", "count 1020")
    later += '\nlocalllm_errors_total{type="server_error",status="500"} 2'
    loud = tracker.update(recorded_stats(), parse(later.replace("lat", "localllm_inter_token_latency_seconds")), 10.0)
    assert loud.itl.num_recent == 20 and loud.itl.p95_s > 2 * loud.itl.baseline_p95_s
    assert abs(loud.error_rate - 2 / 2) < 1e-9  # 2 errors, 0 new requests: all recent responses failed
    assert {a.kind for a in loud.alerts} == {"latency", "errors"}


def test_the_tui_package_loads_nothing_from_localllm():
    code = "import sys, tui.app, tui.launcher, tui.__main__; print('\\n'.join(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "textual" in loaded.stdout.split()
    assert not [m for m in loaded.stdout.split() if m.split(".")[0] == "localllm"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_unreachable_server_is_shown_and_the_app_reconnects():
    port = free_port()
    app = LocalLLMApp(Client(f"http://127.0.0.1:{port}"), poll_interval_s=0.1, max_retry_s=0.3)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: "server unreachable" in screen_text(app), "the outage on screen")
        assert "cannot connect" in screen_text(app)

        async def stats(request: web.Request) -> web.Response:
            return web.json_response(recorded_stats())

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(text=recorded_metrics())

        fake = web.Application()
        fake.router.add_get("/v1/stats", stats)
        fake.router.add_get("/metrics", metrics)
        runner = web.AppRunner(fake)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await wait_for(pilot, lambda: "55.8 tok/s" in screen_text(app), "the stats after reconnecting")
            assert "server unreachable" not in screen_text(app) and app.connection.is_up
        finally:
            await runner.cleanup()


async def test_a_rejected_key_says_so():
    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "bad key", "type": "authentication_error"}}, status=401)

    fake = web.Application()
    fake.router.add_get("/v1/stats", stats)
    runner = web.AppRunner(fake)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        app = LocalLLMApp(Client(f"http://127.0.0.1:{port}", "wrong"), poll_interval_s=0.1, max_retry_s=0.3)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: "API key rejected" in screen_text(app), "the rejected key on screen")
            assert "--api-key" in screen_text(app)
    finally:
        await runner.cleanup()
