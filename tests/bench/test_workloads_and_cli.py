"""Workload construction, statistics and the command line (with the fake server)."""
from __future__ import annotations

import json
import sys

import pytest

from localllm.bench.stats import percentile
from localllm.bench.workloads import Length, WorkloadConfig, build_requests
from localllm.cli import main as cli_main
from tests.bench.fake_server import FakeServer, Script


def test_length_parses_fixed_and_ranges():
    assert Length.parse("128") == Length(128, 128)
    assert Length.parse("64:256") == Length(64, 256)
    with pytest.raises(ValueError):
        Length.parse("9:3")


def test_percentile_interpolates_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([7.0], 95) == 7.0


def test_builds_are_reproducible_and_salted():
    config = WorkloadConfig("plain", prompt_tokens=Length(20, 40), max_tokens=Length(10, 50))
    assert build_requests(config, 10, 2, "s") == build_requests(config, 10, 2, "s")
    assert build_requests(config, 10, 2, "s")[0].prompt != build_requests(config, 10, 2, "t")[0].prompt
    lengths = {spec.max_tokens for spec in build_requests(config, 30, 2)}
    assert len(lengths) > 1 and all(10 <= n <= 50 for n in lengths)


@pytest.mark.parametrize("name", ["repeated", "mixed"])
def test_repeats_are_exact_copies_at_temperature_zero_placed_behind_the_window(name):
    specs = build_requests(WorkloadConfig(name, repeat_fraction=0.3), 40, 8)
    repeats = [(i, s) for i, s in enumerate(specs) if s.tag == "repeat"]
    assert 9 <= len(repeats) <= 12
    for i, spec in repeats:
        original = specs[spec.after]
        assert original.tag == "original" and spec.after <= i - 8
        assert (spec.prompt, spec.max_tokens, spec.temperature) == (original.prompt, original.max_tokens, 0.0)
    assert all(s.temperature == 0.0 and not s.bypass_cache for s in specs)
    if name == "mixed":
        system = specs[0].prompt.split("User:")[0]
        assert len(system.split()) > 400 and all(s.prompt.startswith(system) for s in specs)


def test_shared_prefix_groups_share_about_the_requested_prefix():
    specs = build_requests(WorkloadConfig("shared-prefix", prefix_tokens=1000, group_size=3), 6, 1)
    assert [s.tag for s in specs] == ["cold", "warm", "warm"] * 2
    assert [s.after for s in specs] == [None, 0, 0, None, 3, 3]
    prefix = specs[0].prompt.split("Question")[0]
    assert 1000 <= len(prefix.split()) <= 1005
    assert specs[1].prompt.startswith(prefix) and not specs[3].prompt.startswith(prefix)
    assert specs[1].prompt != specs[2].prompt and all(s.bypass_cache for s in specs)


def test_cli_prints_a_table_and_writes_json_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    with FakeServer(Script(ttft_s=0.01, itl_s=0.001)) as server:
        status = cli_main(["bench", server.url, "--concurrency", "1", "2", "--rounds", "1", "--max-tokens", "4",
                           "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")])
    assert status == 0
    out = capsys.readouterr().out
    assert "ttft p50" in out and "output tokens counted from: usage" in out and "plot written" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 2]
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_without_matplotlib_skips_the_plot_and_fails_on_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with FakeServer(Script(ttft_s=0.01, itl_s=0.001, fail_every=2)) as server:
        status = cli_main(["bench", server.url, "--concurrency", "2", "--requests", "4", "--max-tokens", "2",
                           "--plot", str(tmp_path / "r.png"), "--json", "-"])
    captured = capsys.readouterr()
    assert status == 1 and not (tmp_path / "r.png").exists()
    assert "plot skipped: matplotlib is not installed" in captured.err
    report = json.loads(captured.out)  # --json - keeps stdout pure JSON
    assert report["levels"][0]["num_errors"] == 2 and "HTTP 500" in report["levels"][0]["first_error"]
