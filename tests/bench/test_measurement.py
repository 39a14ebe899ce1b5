"""The tool measures correctly against a scripted fake server: known delays give known TTFT/ITL/E2E."""
from __future__ import annotations

import asyncio
import json

import pytest

from localllm.bench.runner import RunConfig, run_level, run_specs, run_sweep
from localllm.bench.workloads import Length, RequestSpec, WorkloadConfig
from tests.bench.fake_server import FakeServer, Script

# The scripted delays are lower bounds the tool must see; the upper margin covers loopback
# and scheduling on a busy 2-core machine (CI shares it with llama.cpp builds and servers),
# wide enough that load never fails the test, narrow enough that a wrong measure would.
TOLERANCE_MS = 150.0


def level(server: FakeServer, workload: WorkloadConfig, concurrency: int, num_requests: int, **run) -> dict:
    return asyncio.run(run_level(RunConfig(server.url, warmup=False, **run), workload, concurrency, num_requests))


def test_known_delays_give_known_ttft_itl_and_e2e():
    with FakeServer(Script(ttft_s=0.10, itl_s=0.02)) as server:
        summary = level(server, WorkloadConfig(max_tokens=Length(10, 10)), 4, 8)
    assert summary["num_requests"] == 8 and summary["num_errors"] == 0
    assert 100 <= summary["ttft_ms"]["p50"] <= 100 + TOLERANCE_MS
    assert 20 - 5 <= summary["itl_ms"]["p50"] <= 20 + 40
    assert summary["itl_ms"]["count"] == 8 * 9
    expected_e2e_ms = 100 + 9 * 20
    assert expected_e2e_ms <= summary["e2e_ms"]["p50"] <= expected_e2e_ms + 3 * TOLERANCE_MS
    # two waves of four: 80 tokens in ~2 x 280 ms
    assert 2 * expected_e2e_ms / 1000 <= summary["elapsed_s"] <= 2 * (expected_e2e_ms + 3 * TOLERANCE_MS) / 1000
    assert summary["output_tokens_per_s"] == pytest.approx(80 / summary["elapsed_s"], rel=1e-3)
    assert summary["requests_per_s"] == pytest.approx(8 / summary["elapsed_s"], rel=1e-3)
    assert summary["token_count_source"] == "usage"


def test_concurrency_is_held_and_not_exceeded():
    with FakeServer(Script(ttft_s=0.03, itl_s=0.005)) as server:
        level(server, WorkloadConfig(max_tokens=Length(5, 5)), 3, 9)
        assert server.max_in_flight == 3
        assert len(server.requests) == 9


def test_output_tokens_come_from_usage_when_sent_else_from_chunks():
    workload = WorkloadConfig(max_tokens=Length(8, 8))
    with FakeServer(Script(ttft_s=0.01, itl_s=0.002, tokens_per_chunk=2)) as server:
        with_usage = level(server, workload, 2, 2)
        server.script.send_usage = False
        without = level(server, workload, 2, 2)
    assert with_usage["token_count_source"] == "usage" and with_usage["num_output_tokens"] == 16
    assert without["token_count_source"] == "chunks" and without["num_output_tokens"] == 8  # 4 chunks each


def test_http_errors_are_counted_with_the_first_error_text():
    with FakeServer(Script(ttft_s=0.01, itl_s=0.002, fail_every=3)) as server:
        summary = level(server, WorkloadConfig(max_tokens=Length(4, 4)), 1, 6)
    assert summary["num_errors"] == 2
    assert summary["first_error"].startswith("HTTP 500") and "scripted failure 3" in summary["first_error"]
    assert summary["ttft_ms"]["count"] == 4  # latencies only over the successful requests
    assert summary["requests_per_s"] == pytest.approx(4 / summary["elapsed_s"], rel=1e-3)


def test_error_chunks_mid_stream_are_errors():
    with FakeServer(Script(ttft_s=0.01, itl_s=0.002, error_chunk_every=2)) as server:
        summary = level(server, WorkloadConfig(max_tokens=Length(6, 6)), 2, 4)
    assert summary["num_errors"] == 2
    assert "scripted stream error" in summary["first_error"]


def test_refused_connections_are_errors_not_crashes():
    with FakeServer() as server:
        url = server.url
    summary = asyncio.run(run_level(RunConfig(url, warmup=False, timeout_s=5), WorkloadConfig(), 2, 3))
    assert summary["num_errors"] == 3 and "ClientConnectorError" in summary["first_error"]
    assert summary["ttft_ms"]["p50"] is None
    json.dumps(summary)  # still valid JSON


def test_shared_prefix_reports_cold_and_warm_and_warm_waits_for_cold():
    script = Script(ttft_s=0.15, itl_s=0.002, prefix_chars=200, warm_ttft_s=0.01)
    workload = WorkloadConfig("shared-prefix", max_tokens=Length(4, 4), prefix_tokens=100, group_size=4)
    with FakeServer(script) as server:
        summary = level(server, workload, 4, 8)
        seen = server.requests
    cold, warm = summary["by_tag"]["cold"], summary["by_tag"]["warm"]
    assert cold["num_requests"] == 2 and warm["num_requests"] == 6
    assert 150 <= cold["ttft_ms"]["p50"] <= 150 + TOLERANCE_MS
    assert warm["ttft_ms"]["p95"] <= 10 + TOLERANCE_MS
    assert warm["mean_cached_tokens"] == 100 and cold["mean_cached_tokens"] == 0
    for group in (0, 1):
        first = seen_for(seen, f"Document {group}:")
        assert all(s.started_s >= first[0].finished_s for s in first[1:])


def seen_for(seen, marker):
    return sorted((s for s in seen if marker in s.body["prompt"]), key=lambda s: s.started_s)


def test_repeats_wait_for_their_original_and_use_the_cache():
    with FakeServer(Script(ttft_s=0.01, itl_s=0.001)) as server:
        specs = [RequestSpec("a b c", 3, 0.0, tag="original", bypass_cache=False),
                 RequestSpec("x y z", 3, 0.8),
                 RequestSpec("a b c", 3, 0.0, tag="repeat", after=0, bypass_cache=False)]
        results, _ = asyncio.run(run_specs(RunConfig(server.url, warmup=False), specs, 3))
        seen = server.requests
    assert [r.error for r in results] == [None, None, None]
    first, repeat = seen_for(seen, "a b c")
    assert repeat.started_s >= first.finished_s
    assert "X-LocalLLM-Cache" not in first.headers
    assert seen_for(seen, "x y z")[0].headers["X-LocalLLM-Cache"] == "off"
    assert repeat.body["temperature"] == 0.0 and repeat.body["ignore_eos"] is True
    assert repeat.body["stream_options"] == {"include_usage": True}


def test_sweep_shape():
    with FakeServer(Script(ttft_s=0.01, itl_s=0.001)) as server:
        report = asyncio.run(run_sweep(RunConfig(server.url), WorkloadConfig("mixed", max_tokens=Length(2, 5)),
                                       [1, 2, 4], rounds=2))
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 2, 4]
    assert [lv["num_requests"] for lv in report["levels"]] == [2, 4, 8]
    assert report["workload"]["name"] == "mixed" and report["workload"]["max_tokens"] == "2:5"
    level_keys = {"concurrency", "num_requests", "num_errors", "first_error", "elapsed_s", "requests_per_s",
                  "num_output_tokens", "output_tokens_per_s", "token_count_source", "ttft_ms", "itl_ms", "e2e_ms",
                  "mean_output_tokens", "mean_prompt_tokens", "mean_cached_tokens", "by_tag"}
    for lv in report["levels"]:
        assert set(lv) == level_keys
        assert set(lv["ttft_ms"]) == {"p50", "p95", "p99", "mean", "max", "count"}
        assert 2 <= lv["mean_output_tokens"] <= 5
    assert set(report["levels"][2]["by_tag"]) == {"original", "repeat"}
    assert json.loads(json.dumps(report)) == report
