"""What the dashboard shows, derived from /v1/stats and two /metrics scrapes (pure: no I/O).

"Recent" latency and error figures are the difference between the newest scrape and the
oldest one inside `RECENT_WINDOW_S`; the p95 baseline is the same histogram since server start.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from tui.prometheus import Histogram, Scrape

TTFT_METRIC = "localllm_time_to_first_token_seconds"
ITL_METRIC = "localllm_inter_token_latency_seconds"
RECENT_WINDOW_S = 60.0
HISTORY_LEN = 180
"""Chart points kept (one per poll: three minutes at the default 1 s poll)."""
MIN_SAMPLES_FOR_LATENCY_ALERT = 5
GPU_MEMORY_ALERT = 0.95
ERROR_RATE_ALERT = 0.01


@dataclass(frozen=True, slots=True)
class Latency:
    """Percentiles of one latency histogram over the recent window, and its all-time p95."""

    p50_s: float | None = None
    p95_s: float | None = None
    baseline_p95_s: float | None = None
    num_recent: int = 0
    num_total: int = 0

    @classmethod
    def between(cls, now: Histogram, earlier: Histogram) -> Latency:
        recent = now.minus(earlier)
        return cls(recent.quantile(0.5), recent.quantile(0.95), now.quantile(0.95), int(recent.count), int(now.count))

    @property
    def is_degraded(self) -> bool:
        """p95 above twice its baseline, with enough observations on both sides to mean something."""
        if self.p95_s is None or self.baseline_p95_s is None or self.baseline_p95_s <= 0:
            return False
        enough = self.num_recent >= MIN_SAMPLES_FOR_LATENCY_ALERT and self.num_total > self.num_recent
        return enough and self.p95_s > 2 * self.baseline_p95_s


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    """"latency", "errors" or "gpu_memory"."""
    message: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One poll's worth of everything the screens display."""

    stats: dict[str, Any]
    """The /v1/stats JSON as received."""
    ttft: Latency = Latency()
    itl: Latency = Latency()
    error_rate: float | None = None
    """Error responses / all responses over the recent window; None when there were none."""
    generation_history: tuple[float, ...] = ()
    prompt_history: tuple[float, ...] = ()
    alerts: tuple[Alert, ...] = ()

    def get(self, key: str, default: Any = 0) -> Any:
        value = self.stats.get(key, default)
        return default if value is None else value

    @property
    def kv_usage(self) -> float | None:
        total = self.get("num_kv_cells_total")
        return self.get("num_kv_cells_used") / total if total else None

    @property
    def prefix_hit_rate(self) -> float | None:
        """Prefix-cache hits (from a slot or a prefix state on disk) per admitted request."""
        admitted = self.get("num_admitted_total")
        return self.get("num_prefix_hits_total") / admitted if admitted else None


@dataclass
class Tracker:
    """Turns successive polls into Snapshots: keeps the chart history and the scrapes of the window."""

    window_s: float = RECENT_WINDOW_S
    history_len: int = HISTORY_LEN
    _scrapes: deque[tuple[float, Scrape]] = field(default_factory=deque)
    _generation: deque[float] = field(default_factory=deque)
    _prompt: deque[float] = field(default_factory=deque)

    def update(self, stats: dict[str, Any], scrape: Scrape | None, now: float) -> Snapshot:
        """Records one poll (changes state) and returns what to show."""
        self._push(self._generation, float(stats.get("generation_tokens_per_s") or 0.0))
        self._push(self._prompt, float(stats.get("prompt_tokens_per_s") or 0.0))
        ttft = itl = Latency()
        error_rate = None
        if scrape is not None:
            while self._scrapes and self._scrapes[0][0] < now - self.window_s:
                self._scrapes.popleft()
            earlier = self._scrapes[0][1] if self._scrapes else Scrape()
            self._scrapes.append((now, scrape))
            ttft = Latency.between(scrape.histogram(TTFT_METRIC), earlier.histogram(TTFT_METRIC))
            itl = Latency.between(scrape.histogram(ITL_METRIC), earlier.histogram(ITL_METRIC))
            error_rate = _error_rate(scrape, earlier)
        snapshot = Snapshot(stats, ttft, itl, error_rate, tuple(self._generation), tuple(self._prompt))
        return replace(snapshot, alerts=find_alerts(snapshot))

    def _push(self, history: deque[float], value: float) -> None:
        history.append(value)
        while len(history) > self.history_len:
            history.popleft()


def _error_rate(now: Scrape, earlier: Scrape) -> float | None:
    def counts(s: Scrape) -> tuple[float, float]:
        errors = s.total("localllm_errors_total") + s.total("localllm_requests_total", status="error")
        return errors, s.total("localllm_requests_total") + s.total("localllm_errors_total")

    errors_now, all_now = counts(now)
    errors_then, all_then = counts(earlier)
    if all_now < all_then:  # server restarted: counters reset
        errors_then = all_then = 0.0
    responses = all_now - all_then
    return (errors_now - errors_then) / responses if responses > 0 else None


def find_alerts(snapshot: Snapshot) -> tuple[Alert, ...]:
    alerts: list[Alert] = []
    for name, latency in (("TTFT", snapshot.ttft), ("ITL", snapshot.itl)):
        if latency.is_degraded:
            alerts.append(Alert("latency", f"{name} p95 {format_seconds(latency.p95_s)} >2x base "
                                           f"{format_seconds(latency.baseline_p95_s)}"))
    if snapshot.error_rate is not None and snapshot.error_rate > ERROR_RATE_ALERT:
        alerts.append(Alert("errors", f"errors {snapshot.error_rate:.1%} >1%"))
    for gpu in (snapshot.stats.get("host") or {}).get("gpus") or []:
        total = gpu.get("memory_total_bytes") or 0
        if total and (gpu.get("memory_used_bytes") or 0) / total > GPU_MEMORY_ALERT:
            alerts.append(Alert("gpu_memory", f"GPU{gpu.get('index', '?')} memory "
                                              f"{gpu['memory_used_bytes'] / total:.0%}"))
    return tuple(alerts)


def format_seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def format_bytes(value: float | None) -> str:
    if value is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit in ("B", "KiB") else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
