"""ResponseCache on real diskcache: round trip, TTL, size limit, sharing, broken directories."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from localllm.cache.response_cache import ResponseCache, ResponseCacheConfig, _decode, _encode, request_key
from localllm.types import FinishReason, TokenDelta, TokenLogprob

ROOT = Path(__file__).resolve().parents[2]


def answer(text: str = "hello") -> list[tuple[int, TokenDelta]]:
    return [(0, TokenDelta("r", text="hel", token_ids=[5], num_prompt_tokens=3, num_generated_tokens=1,
                           logprobs=[TokenLogprob(5, -0.1, ((5, -0.1), (6, -2.0)))])),
            (0, TokenDelta("r", text=text[3:], token_ids=[6], finish_reason=FinishReason.STOP,
                           num_prompt_tokens=3, num_generated_tokens=2, stop_sequence="\n\n"))]


def test_round_trip_keeps_deltas_and_marks_the_prompt_cached(tmp_path: Path):
    cache = ResponseCache(ResponseCacheConfig(tmp_path))
    assert cache.get("k") is None
    cache.put("k", answer(), "model-a")
    (i0, d0), (i1, d1) = cache.get("k")
    assert (i0, d0.text, d0.token_ids, d0.logprobs[0].top) == (0, "hel", [5], ((5, -0.1), (6, -2.0)))
    assert d1.finish_reason is FinishReason.STOP and d1.num_cached_tokens == d1.num_prompt_tokens == 3
    assert (d0.stop_sequence, d1.stop_sequence) == (None, "\n\n")
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1


def test_entries_without_a_stop_sequence_field_still_read():
    """Entries written before the stop string was recorded (seven fields per delta) still read."""
    rows = json.loads(_encode(answer()))
    assert [len(row) for row in rows] == [8, 8]
    legacy = _decode(json.dumps([row[:7] for row in rows]).encode())
    assert legacy is not None and [d.stop_sequence for _, d in legacy] == [None, None]
    assert legacy[1][1].text == "lo" and legacy[1][1].finish_reason is FinishReason.STOP
    assert _decode(json.dumps([row + ["x"] for row in rows]).encode()) is None  # a field too many
    assert _decode(json.dumps([row[:7] + [5] for row in rows]).encode()) is None  # not a string


def test_key_changes_with_every_component():
    base = dict(model_identity="m", kind="chat", prompts=["p"], n=1, params={"temperature": 0}, extra={})
    keys = {request_key(**base)}
    for change in [{"model_identity": "m2"}, {"kind": "text"}, {"prompts": ["q"]}, {"n": 2},
                   {"params": {"temperature": 0, "seed": 1}}, {"extra": {"echo": True}}]:
        keys.add(request_key(**{**base, **change}))
    assert len(keys) == 7


def test_entries_expire_after_the_ttl(tmp_path: Path):
    cache = ResponseCache(ResponseCacheConfig(tmp_path, ttl_s=0.2))
    cache.put("k", answer(), "m")
    assert cache.get("k") is not None
    time.sleep(0.3)
    assert cache.get("k") is None


def test_size_limit_evicts_oldest_entries(tmp_path: Path):
    cache = ResponseCache(ResponseCacheConfig(tmp_path, size_limit_bytes=200_000))
    for i in range(200):
        cache.put(f"k{i}", answer("x" * 5000), "m")
    stats = cache.stats()
    assert stats["size_bytes"] <= 200_000 * 1.5  # diskcache culls on write, in batches
    assert stats["evictions"] > 0 and stats["entries"] < 200
    assert cache.get("k199") is not None and cache.get("k0") is None


def test_two_processes_share_one_directory(tmp_path: Path):
    cache = ResponseCache(ResponseCacheConfig(tmp_path))
    code = ("import sys; from localllm.cache.response_cache import *; "
            "from tests.unit.test_response_cache import answer; "
            "ResponseCache(ResponseCacheConfig(__import__('pathlib').Path(sys.argv[1]))).put('shared', answer('hello!'), 'm')")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, check=True)
    assert "".join(d.text for _, d in cache.get("shared")) == "hello!"


def test_unusable_directories_disable_the_cache_without_raising(tmp_path: Path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "cache.db").write_bytes(b"this is not an sqlite database" * 100)
    for directory in [not_a_dir, corrupt, Path("/proc/localllm-cache")]:
        cache = ResponseCache(ResponseCacheConfig(directory))
        assert not cache.is_active and cache.error and cache.num_errors == 1
        assert cache.get("k") is None
        cache.put("k", answer(), "m")  # a no-op, not an exception
        assert cache.stats()["active"] is False


def test_unreadable_entry_is_a_miss(tmp_path: Path):
    cache = ResponseCache(ResponseCacheConfig(tmp_path))
    cache._cache.set("bad", "{not json")
    assert cache.get("bad") is None


def test_cache_cli_stats_and_clear(tmp_path: Path):
    cache = ResponseCache(ResponseCacheConfig(tmp_path / "responses"))
    cache.put("a", answer(), "m1")
    cache.put("b", answer(), "m2")
    cache.close()
    run = lambda *args: subprocess.run([sys.executable, "-m", "localllm.cli", "cache", *args, "--cache-dir",  # noqa: E731
                                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    stats = run("stats")
    assert stats.returncode == 0 and '"entries": 2' in stats.stdout
    assert "removed 1" in run("clear", "--model", "m1").stdout
    assert '"entries": 1' in run("stats").stdout
    assert "removed 1" in run("clear").stdout
