"""The report: a text table, JSON, and a PNG plot across the sweep (matplotlib optional)."""
from __future__ import annotations

import json
from pathlib import Path

COLUMNS = (
    # header, width, how to read it from a level (or tag) summary
    ("conc", 4, lambda s: s.get("concurrency", "")),
    ("reqs", 5, lambda s: s["num_requests"]),
    ("err", 4, lambda s: s["num_errors"]),
    ("req/s", 7, lambda s: _num(s.get("requests_per_s"), 2)),
    ("tok/s", 8, lambda s: _num(s.get("output_tokens_per_s"), 1)),
    ("ttft p50", 9, lambda s: _num(s["ttft_ms"]["p50"], 0)),
    ("p95", 7, lambda s: _num(s["ttft_ms"]["p95"], 0)),
    ("p99", 7, lambda s: _num(s["ttft_ms"]["p99"], 0)),
    ("itl p50", 8, lambda s: _num(s["itl_ms"]["p50"], 1)),
    ("p95", 7, lambda s: _num(s["itl_ms"]["p95"], 1)),
    ("p99", 7, lambda s: _num(s["itl_ms"]["p99"], 1)),
    ("e2e p50", 8, lambda s: _num(s["e2e_ms"]["p50"], 0)),
    ("p95", 7, lambda s: _num(s["e2e_ms"]["p95"], 0)),
    ("p99", 7, lambda s: _num(s["e2e_ms"]["p99"], 0)),
    ("cached", 7, lambda s: _num(s.get("mean_cached_tokens"), 0)),
)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_header() -> str:
    return " ".join(f"{name:>{width}}" for name, width, _ in COLUMNS) + "   (times in ms)"


def table_row(summary: dict, label: str | None = None) -> str:
    cells = [f"{get(summary)!s:>{width}}" for _, width, get in COLUMNS]
    if label is not None:
        cells[0] = f"{label:>{COLUMNS[0][1]}}"
    return " ".join(cells)


def format_table(report: dict) -> str:
    """Header, one row per level, an indented row per tag (cold/warm, original/repeat), then the notes."""
    lines = [table_header()]
    for level in report["levels"]:
        lines.append(table_row(level))
        for tag, summary in level.get("by_tag", {}).items():
            lines.append(table_row(summary, label=f" {tag}"))
    return "\n".join(lines + [format_notes(report)])


def format_notes(report: dict) -> str:
    """How output tokens were counted, and the first error of each level that had errors."""
    sources = sorted({level["token_count_source"] for level in report["levels"]})
    lines = []
    lines.append(f"output tokens counted from: {', '.join(sources) or '-'}"
                 " (usage = the server's usage.completion_tokens; chunks = streamed chunks with text)")
    for level in report["levels"]:
        if level["first_error"]:
            lines.append(f"concurrency {level['concurrency']}: {level['num_errors']} error(s), first: "
                         f"{level['first_error']}")
    return "\n".join(lines)


def write_json(report: dict, path: str | Path) -> None:
    """`-` prints to stdout."""
    text = json.dumps(report, indent=2)
    if str(path) == "-":
        print(text)
    else:
        Path(path).write_text(text + "\n")


PANELS = (
    ("output tokens/s", lambda s: [s["output_tokens_per_s"]], ("",)),
    ("requests/s", lambda s: [s["requests_per_s"]], ("",)),
    ("TTFT ms", lambda s: [s["ttft_ms"]["p50"], s["ttft_ms"]["p95"]], (" p50", " p95")),
    ("ITL ms", lambda s: [s["itl_ms"]["p50"], s["itl_ms"]["p95"]], (" p50", " p95")),
)


def plot(series: dict[str, list[dict]], path: str | Path, title: str = "") -> str:
    """A 2x2 PNG across concurrency levels, one line per series (e.g. per server).
    Returns a line saying what was written, or why nothing was (no matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install 'localllm[bench]')"
    figure, axes = plt.subplots(2, 2, figsize=(9, 6), dpi=80)
    for axis, (name, values_of, suffixes) in zip(axes.flat, PANELS):
        for label, levels in series.items():
            xs = [level["concurrency"] for level in levels]
            columns = list(zip(*(values_of(level) for level in levels))) if levels else []
            for suffix, ys in zip(suffixes, columns):
                axis.plot(xs, [float("nan") if y is None else y for y in ys], marker="o",
                          linestyle="--" if suffix == " p95" else "-", label=label + suffix)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("concurrent streams", fontsize=8)
        axis.set_xscale("log", base=2)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return f"plot written to {path}"
