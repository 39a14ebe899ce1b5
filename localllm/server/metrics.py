"""Prometheus metrics: request latencies observed by the server, engine facts read at scrape."""
from __future__ import annotations

from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from localllm.types import EngineStats

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ITL_BUCKETS_S = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1, 2.5)


class ServerMetrics:
    """One registry per application, so several apps in one process stay apart."""

    def __init__(self, engine_stats: Callable[[], EngineStats | None],
                 key_usage: Callable[[], dict[str, dict]] = dict,
                 response_cache_stats: Callable[[], dict] = dict) -> None:
        self.registry = CollectorRegistry()
        self.ttft_s = Histogram("localllm_time_to_first_token_seconds", "Time to first token",
                                buckets=_LATENCY_BUCKETS_S, registry=self.registry)
        self.itl_s = Histogram("localllm_inter_token_latency_seconds", "Time between streamed tokens",
                               buckets=_ITL_BUCKETS_S, registry=self.registry)
        self.e2e_s = Histogram("localllm_request_duration_seconds", "End-to-end generation request time",
                               buckets=_LATENCY_BUCKETS_S, registry=self.registry)
        self.requests = Counter("localllm_requests", "Generation requests by endpoint and outcome",
                                ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("localllm_errors", "Error responses by OpenAI error type and HTTP status",
                              ["type", "status"], registry=self.registry)
        self.client_disconnects = Counter(
            "localllm_client_disconnects", "Requests whose client hung up before the answer was complete "
            "(logged as status 499; not server errors)", registry=self.registry)
        self.registry.register(_EngineCollector(engine_stats))
        self.registry.register(_KeyUsageCollector(key_usage))
        self.registry.register(_ResponseCacheCollector(response_cache_stats))

    def render(self) -> web.Response:
        response = web.Response(body=generate_latest(self.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response


class _EngineCollector:
    """Reads the engine's last published snapshot at scrape time: no work on the hot path."""

    def __init__(self, engine_stats: Callable[[], EngineStats | None]) -> None:
        self._engine_stats = engine_stats

    def collect(self) -> Iterator[Metric]:
        stats = self._engine_stats()
        if stats is None:
            return
        yield _gauge("localllm_requests_running", "Requests holding a slot", stats.num_busy_slots)
        yield _gauge("localllm_requests_waiting", "Requests waiting for a slot", stats.num_waiting)
        yield _gauge("localllm_slots", "Parallel slots", stats.num_slots)
        yield _gauge("localllm_kv_cache_usage_ratio", "KV cells in use / KV cells in all",
                     stats.num_kv_cells_used / max(1, stats.num_kv_cells_total))
        yield _gauge("localllm_prompt_tokens_per_second", "Prompt tokens evaluated per second (recent)",
                     stats.prompt_tokens_per_s)
        yield _gauge("localllm_generation_tokens_per_second", "Tokens generated per second (recent)",
                     stats.generation_tokens_per_s)
        yield _counter("localllm_prompt_tokens", "Prompt tokens evaluated", stats.num_prompt_tokens_total)
        yield _counter("localllm_generation_tokens", "Tokens generated", stats.num_generated_tokens_total)
        # Prefix cache: a hit reuses prompt tokens from a slot (in memory) or a restored prefix state (disk).
        yield _counter("localllm_prefix_cache_queries", "Requests admitted (each looks up the prefix cache)",
                       stats.num_admitted_total)
        yield _counter("localllm_prefix_cache_hits", "Admitted requests that reused cached prompt tokens",
                       stats.num_prefix_hits_total)
        yield _counter("localllm_prefix_cache_reused_tokens",
                       "Prompt tokens reused from the prefix cache or prefix states", stats.num_reused_tokens_total)
        finished = CounterMetricFamily("localllm_requests_finished", "Engine requests finished, by reason",
                                       labels=["reason"])
        for reason, count in sorted(stats.finished_by_reason.items()):
            finished.add_metric([reason], count)
        yield finished


class _KeyUsageCollector:
    def __init__(self, key_usage: Callable[[], dict[str, dict]]) -> None:
        self._key_usage = key_usage

    def collect(self) -> Iterator[Metric]:
        families = {field: CounterMetricFamily(f"localllm_key_{field}", f"Per API key: {field}", labels=["key"])
                    for field in ("requests", "tokens", "rate_limited")}
        by_protocol = {field: CounterMetricFamily(f"localllm_key_protocol_{field}", f"Per API key and protocol: {field}",
                                                  labels=["key", "protocol"]) for field in ("requests", "tokens")}
        for key_id, counts in sorted(self._key_usage().items()):
            for field, family in families.items():
                family.add_metric([key_id], counts[field])
            for protocol, protocol_counts in counts.get("protocols", {}).items():
                for field, family in by_protocol.items():
                    family.add_metric([key_id, protocol], protocol_counts[field])
        yield from families.values()
        yield from by_protocol.values()


class _ResponseCacheCollector:
    def __init__(self, response_cache_stats: Callable[[], dict]) -> None:
        self._cache_stats = response_cache_stats

    def collect(self) -> Iterator[Metric]:
        stats = self._cache_stats()
        if not stats:
            return
        for field in ("hits", "misses", "errors", "evictions"):
            yield _counter(f"localllm_response_cache_{field}", f"Response cache {field}", stats[field])
        yield _gauge("localllm_response_cache_size_bytes", "Response cache size on disk", stats["size_bytes"])
        yield _gauge("localllm_response_cache_entries", "Response cache entries", stats["entries"])
        yield _gauge("localllm_response_cache_active", "1 while the response cache works", int(stats["active"]))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


METRICS_KEY = web.AppKey("metrics", ServerMetrics)
