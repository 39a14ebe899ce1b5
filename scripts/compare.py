"""Side by side: llama-server and `localllm serve` on the same model, threads, slots and context,
the same workloads (localllm/bench), alternating servers, in one run; prints both, the ratios
and the issue's targets.

    scripts/build_llama_server.sh            # once: llama-server + llama-bench from the same llama.cpp
    LOCALLLM_DATA_DIR=/tmp/lldata .venv/bin/python scripts/compare.py \\
        --llama-server /tmp/lcpp/src/build/bin/llama-server --json /tmp/compare.json --plot docs/performance.png

Cases (each server, each repeat): 1 and 8 streams of 128 tokens, 32 streams on 8 slots, a shared
~1,000-token prefix (cold, then warm tails), and the mixed workload (shared system prompt, 30% exact
repeats at temperature 0). Every server start is fresh: localllm gets an empty cache directory, so
nothing carries over between runs. Also: `llama-bench -p 512 -n 128` and each server's RSS.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from localllm.bench.report import plot, table_header, table_row  # noqa: E402
from localllm.bench.runner import RunConfig, run_level  # noqa: E402
from localllm.bench.workloads import Length, WorkloadConfig  # noqa: E402

MIB = 2**20


@dataclass(frozen=True)
class Case:
    name: str
    workload: WorkloadConfig
    concurrency: int
    num_requests: int


def cases(max_tokens: int, scale: int) -> list[Case]:
    tokens = Length(max_tokens, max_tokens)
    return [
        Case("1 stream", WorkloadConfig(max_tokens=tokens), 1, 3 * scale),
        Case("8 streams", WorkloadConfig(max_tokens=tokens), 8, 16 * scale),
        Case("32 streams", WorkloadConfig(max_tokens=tokens), 32, 32 * scale),
        Case("shared prefix", WorkloadConfig("shared-prefix", max_tokens=Length(16, 16), group_size=3), 1, 6 * scale),
        Case("mixed", WorkloadConfig("mixed", max_tokens=Length(32, 128)), 8, 40 * scale),
    ]


def process_rss(pid: int) -> int:
    import psutil

    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


@contextmanager
def server(command: list[str], ready_url: str, env: dict[str, str]):
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(ready_url, timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode}")
        else:
            raise RuntimeError(f"{command[0]} did not become ready")
        yield process
    finally:
        process.terminate()
        process.wait(timeout=60)


def server_specs(args: argparse.Namespace, model: str) -> dict[str, tuple[list[str], str, str]]:
    """name -> (command, base URL, readiness URL)."""
    return {
        "llama-server": ([args.llama_server, "-m", model, "-np", str(args.parallel), "-c", str(args.ctx),
                          "-t", str(args.threads), "-tb", str(args.threads), "--port", "18081",
                          "--host", "127.0.0.1", "-ngl", "0"], "http://127.0.0.1:18081", "http://127.0.0.1:18081/health"),
        "localllm": ([sys.executable, "-m", "localllm.cli", "serve", "--model", model, "--port", "18082",
                      "--parallel", str(args.parallel), "--ctx", str(args.ctx), "--threads", str(args.threads),
                      *args.localllm_flag],
                     "http://127.0.0.1:18082", "http://127.0.0.1:18082/ready"),
    }


def run_server(name: str, spec: tuple[list[str], str, str], all_cases: list[Case]) -> dict:
    """Start one server fresh, run every case, return {case: summary} plus RSS figures."""
    command, base_url, ready_url = spec
    with tempfile.TemporaryDirectory(prefix="compare-cache-") as cache_dir:
        env = {**os.environ, "LOCALLLM_CACHE_DIR": cache_dir, "PYTHONUNBUFFERED": "1"}
        with server(command, ready_url, env) as process:
            run = RunConfig(base_url)
            asyncio.run(run_level(run, WorkloadConfig(max_tokens=Length(8, 8)), 1, 1))  # model loaded and used
            out: dict = {"rss_loaded_mib": process_rss(process.pid) / MIB}
            for case in all_cases:
                out[case.name] = summary = asyncio.run(run_level(run, case.workload, case.concurrency,
                                                                 case.num_requests))
                print(f"  {name:12} {case.name:14} {summary['output_tokens_per_s']:7.1f} tok/s  ttft p50 "
                      f"{_ms(summary['ttft_ms']['p50'])}  p95 {_ms(summary['ttft_ms']['p95'])}  itl p50 "
                      f"{_ms(summary['itl_ms']['p50'])}  errors {summary['num_errors']} "
                      f"{summary['first_error'] or ''}", flush=True)
            out["rss_after_mib"] = process_rss(process.pid) / MIB
    return out


def _ms(value: float | None) -> str:
    return "   -   " if value is None else f"{value:6.1f}ms"


def llama_bench(binary: str, model: str, threads: int) -> dict:
    """pp512 and tg128 tokens/s from `llama-bench -m MODEL -t 2 -p 512 -n 128 -o json`."""
    out = subprocess.run([binary, "-m", model, "-t", str(threads), "-p", "512", "-n", "128", "-o", "json"],
                         capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    return {("pp512" if row["n_prompt"] else "tg128"): row["avg_ts"] for row in rows}


def best(runs: list[dict], case: str, path: tuple[str, ...], higher: bool) -> float | None:
    """Best of the repeats (the least disturbed by anything else on the machine)."""
    values = []
    for run in runs:
        value = run[case]
        for key in path:
            value = value[key] if value is not None else None
        if value is not None:
            values.append(value)
    return (max if higher else min)(values) if values else None


def targets(results: dict[str, list[dict]], bench: dict) -> list[tuple[str, str, float | None, bool | None]]:
    """(target, how it is measured, measured value, met?) for each target of the issue."""
    ours, ref = results["localllm"], results["llama-server"]

    def ratio(case: str, path: tuple[str, ...], higher: bool) -> float | None:
        a, b = best(ours, case, path, higher), best(ref, case, path, higher)
        return a / b if a is not None and b else None

    tok = ("output_tokens_per_s",)
    warm, cold = ("by_tag", "warm", "ttft_ms", "p50"), ("by_tag", "cold", "ttft_ms", "p50")
    our_warm, our_cold = best(ours, "shared prefix", warm, False), best(ours, "shared prefix", cold, False)
    one_stream = best(ours, "1 stream", tok, True)
    errors_32 = max(run["32 streams"]["num_errors"] for run in ours)
    rss_delta = min(r["rss_loaded_mib"] for r in ours) - min(r["rss_loaded_mib"] for r in ref)
    rows = [
        ("8 streams tok/s >= 1.0x", "ratio", ratio("8 streams", tok, True), 1.0, True),
        ("8 streams ITL p50 <= 1.1x", "ratio", ratio("8 streams", ("itl_ms", "p50"), False), 1.1, False),
        ("1 stream tok/s >= 0.95x", "ratio", ratio("1 stream", tok, True), 0.95, True),
        ("1 stream >= 0.9x llama-bench tg128", "ratio", one_stream / bench["tg128"] if one_stream and bench else None,
         0.9, True),
        ("32 streams on 8 slots: no errors", "errors", float(errors_32), 0.0, False),
        ("32 streams TTFT p95 <= 1.2x", "ratio", ratio("32 streams", ("ttft_ms", "p95"), False), 1.2, False),
        ("prefix warm TTFT <= 0.06x cold", "ratio", our_warm / our_cold if our_warm and our_cold else None, 0.06,
         False),
        ("prefix warm TTFT <= 1.2x", "ratio", ratio("shared prefix", warm, False), 1.2, False),
        ("mixed tok/s >= 1.5x", "ratio", ratio("mixed", tok, True), 1.5, True),
        ("RSS <= llama-server + 150 MiB", "MiB", rss_delta, 150.0, False),
    ]
    return [(name, unit, value, None if value is None else (value >= limit if higher else value <= limit))
            for name, unit, value, limit, higher in rows]


def print_summary(results: dict[str, list[dict]], all_cases: list[Case], bench: dict) -> list:
    print("\nbest of the repeats per server and case")
    print(f"{'server':>12} {'case':>14} " + table_header())
    for case in all_cases:
        for name in ("llama-server", "localllm"):
            level = max((run[case.name] for run in results[name]), key=lambda s: s["output_tokens_per_s"])
            print(f"{name:>12} {case.name:>14} " + table_row(level))
            for tag, tagged in level["by_tag"].items():
                print(f"{'':>12} {'':>14} " + table_row(tagged, label=f" {tag}"))
    for name in ("llama-server", "localllm"):
        rss = [(r["rss_loaded_mib"], r["rss_after_mib"]) for r in results[name]]
        print(f"{name:>12} RSS loaded {min(a for a, _ in rss):.0f} MiB, after the cases {max(b for _, b in rss):.0f} MiB")
    if bench:
        print(f"llama-bench: pp512 {bench['pp512']:.1f} tok/s, tg128 {bench['tg128']:.1f} tok/s")
    rows = targets(results, bench)
    print("\ntargets (ratio = localllm / llama-server)")
    for name, unit, value, met in rows:
        shown = "-" if value is None else f"{value:.3f}" if unit == "ratio" else f"{value:.0f} {unit}"
        print(f"  {name:38} {shown:>10}  {'met' if met else 'NOT met' if met is False else '?'}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-server", default="/tmp/llama-server-build/build/bin/llama-server")
    parser.add_argument("--llama-bench", help="default: next to --llama-server; 'none' to skip")
    parser.add_argument("--model", help="GGUF path (default: the bundled model in the localllm store)")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternations of the two servers")
    parser.add_argument("--scale", type=int, default=1, help="multiply the number of requests per case")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--only", nargs="+", help="run only these cases (names as printed)")
    parser.add_argument("--localllm-flag", action="append", default=[],
                        help="extra `localllm serve` flag, e.g. --localllm-flag=--no-swa-full (repeatable)")
    parser.add_argument("--json", dest="json_path", help="write every run and the targets as JSON")
    parser.add_argument("--plot", dest="plot_path", help="PNG: the plain cases (1, 8, 32 streams) of both servers")
    args = parser.parse_args()
    model = args.model or _bundled_model_path()
    all_cases = [c for c in cases(args.max_tokens, args.scale) if not args.only or c.name in args.only]
    bench_binary = args.llama_bench or str(Path(args.llama_server).with_name("llama-bench"))
    bench = {} if bench_binary == "none" else llama_bench(bench_binary, model, args.threads)
    print(f"llama-bench: {bench}" if bench else "llama-bench skipped", flush=True)
    specs = server_specs(args, model)
    results: dict[str, list[dict]] = {name: [] for name in specs}
    for repeat in range(args.repeats):
        order = list(specs) if repeat % 2 == 0 else list(reversed(specs))  # alternate who goes first
        for name in order:
            print(f"[{repeat}] {name}", flush=True)
            results[name].append(run_server(name, specs[name], all_cases))
    rows = print_summary(results, all_cases, bench) if not args.only else []
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"model": model, "threads": args.threads,
                                                    "parallel": args.parallel, "ctx": args.ctx, "llama_bench": bench,
                                                    "runs": results, "targets": rows}, indent=2) + "\n")
    if args.plot_path:
        plain = [c.name for c in all_cases if c.workload.name == "plain"]
        series = {name: [max((run[c] for run in runs), key=lambda s: s["output_tokens_per_s"]) for c in plain]
                  for name, runs in results.items()}
        print(plot(series, args.plot_path, f"plain 128-token streams, {args.parallel} slots, {args.threads} threads"))


def _bundled_model_path() -> str:
    from localllm.config import Config
    from localllm.models.registry import load_catalogue
    from localllm.models.store import ModelStore

    path, _ = ModelStore(Config.load().data_dir, load_catalogue()).resolve("gemma3-270m")
    return str(path)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
