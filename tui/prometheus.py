"""Prometheus text parsing and histogram quantiles (pure: no I/O, no Textual)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_SAMPLE_RE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative bucket counts of one histogram, sorted by upper bound (the last is +Inf)."""

    buckets: tuple[tuple[float, float], ...] = ()
    """(upper bound `le`, cumulative count) pairs."""
    count: float = 0.0
    sum: float = 0.0

    def minus(self, earlier: Histogram) -> Histogram:
        """The observations made between `earlier` and this scrape (a counter reset gives self)."""
        if earlier.count > self.count or len(earlier.buckets) != len(self.buckets):
            return self
        buckets = tuple((le, c - e) for (le, c), (_, e) in zip(self.buckets, earlier.buckets))
        return Histogram(buckets, self.count - earlier.count, self.sum - earlier.sum)

    def quantile(self, q: float) -> float | None:
        """Estimated q-quantile by linear interpolation inside the bucket (as PromQL does); None if empty."""
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(le):
                    return lower  # beyond the last finite bound: report that bound
                in_bucket = cumulative - below
                fraction = (rank - below) / in_bucket if in_bucket > 0 else 1.0
                return lower + (le - lower) * fraction
            lower, below = le, cumulative
        return lower


@dataclass(frozen=True, slots=True)
class Scrape:
    """One /metrics scrape: plain samples by (name, labels) and histograms by name."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)

    def total(self, name: str, **match: str) -> float:
        """Sum of the samples called `name` whose labels include `match`."""
        return sum(v for (n, labels), v in self.samples.items()
                   if n == name and all((k, val) in labels for k, val in match.items()))

    def histogram(self, name: str) -> Histogram:
        return self.histograms.get(name, Histogram())


def parse(text: str) -> Scrape:
    """Parses Prometheus text exposition; lines it cannot read are skipped."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    raw_buckets: dict[str, list[tuple[float, float]]] = {}
    for line in text.splitlines():
        match = _SAMPLE_RE.match(line)
        if line.startswith("#") or not match:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        name = match["name"]
        labels = tuple(sorted(_LABEL_RE.findall(match["labels"] or "")))
        if name.endswith("_bucket") and any(k == "le" for k, _ in labels):
            le = dict(labels)["le"]
            raw_buckets.setdefault(name[: -len("_bucket")], []).append((float(le), value))
        else:
            samples[(name, labels)] = value
    histograms = {
        base: Histogram(tuple(sorted(buckets)), samples.get((f"{base}_count", ()), 0.0),
                        samples.get((f"{base}_sum", ()), 0.0))
        for base, buckets in raw_buckets.items()
    }
    return Scrape(samples, histograms)
