"""Percentiles and the summary of one level (the JSON shape the report prints and plots)."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from localllm.bench.client import RequestResult

PERCENTILES = (50, 95, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution_ms(values_s: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/mean/max in milliseconds (None where there are no values, so JSON stays valid)."""
    if not values_s:
        return {**{f"p{q}": None for q in PERCENTILES}, "mean": None, "max": None, "count": 0}
    out: dict[str, float | int | None] = {f"p{q}": round(1000 * percentile(values_s, q), 3) for q in PERCENTILES}
    out["mean"] = round(1000 * statistics.fmean(values_s), 3)
    out["max"] = round(1000 * max(values_s), 3)
    out["count"] = len(values_s)
    return out


def token_count_source(results: Sequence[RequestResult]) -> str:
    """usage (every answer carried usage.completion_tokens), chunks (none did) or mixed."""
    with_usage = sum(r.num_usage_tokens is not None for r in results)
    if results and with_usage == len(results):
        return "usage"
    return "chunks" if with_usage == 0 else "mixed"


def summarize(results: Sequence[RequestResult], elapsed_s: float, concurrency: int) -> dict:
    """One level: throughput over the wall time of the level, latency distributions over the
    successful requests, errors with the first error's text, and the same per tag."""
    ok = [r for r in results if r.error is None]
    num_tokens = sum(r.num_output_tokens for r in ok)
    summary = {
        "concurrency": concurrency,
        "num_requests": len(results),
        "num_errors": len(results) - len(ok),
        "first_error": next((r.error for r in results if r.error), None),
        "elapsed_s": round(elapsed_s, 4),
        "requests_per_s": round(len(ok) / elapsed_s, 4) if elapsed_s > 0 else None,
        "num_output_tokens": num_tokens,
        "output_tokens_per_s": round(num_tokens / elapsed_s, 3) if elapsed_s > 0 else None,
        "token_count_source": token_count_source(ok),
        **_latencies(ok),
    }
    tags = sorted({r.tag for r in results if r.tag})
    summary["by_tag"] = {tag: _tag_summary([r for r in results if r.tag == tag]) for tag in tags}
    return summary


def _latencies(ok: Sequence[RequestResult]) -> dict:
    return {
        "ttft_ms": distribution_ms([r.ttft_s for r in ok if r.ttft_s is not None]),
        "itl_ms": distribution_ms([gap for r in ok for gap in r.itl_s]),
        "e2e_ms": distribution_ms([r.e2e_s for r in ok]),
        "mean_output_tokens": round(statistics.fmean(r.num_output_tokens for r in ok), 2) if ok else None,
        "mean_prompt_tokens": _mean([r.num_prompt_tokens for r in ok]),
        "mean_cached_tokens": _mean([r.num_cached_tokens for r in ok]),
    }


def _tag_summary(results: Sequence[RequestResult]) -> dict:
    ok = [r for r in results if r.error is None]
    return {"num_requests": len(results), "num_errors": len(results) - len(ok), **_latencies(ok)}


def _mean(values: Sequence[int | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.fmean(known), 2) if known else None
