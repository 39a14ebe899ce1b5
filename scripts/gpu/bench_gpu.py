"""GPU side-by-side: llama-server (CUDA, all layers offloaded) and `localllm serve`
(`--n-gpu-layers auto`) on the same model, slots and context, the same streamed
workload from the project's benchmark tool (localllm/bench, `localllm bench`: plain
workload, closed loop, `ignore_eos`), alternating servers, best of the repeats.

    python3 scripts/gpu/bench_gpu.py --llama-server /tmp/gpuwork/build/bin/llama-server \\
        --model /tmp/gpuwork/llama8b-q4_k_m.gguf --parallel 64 --ctx 32768 \\
        --concurrency 1 16 64 --out-dir /tmp/gpuwork/results \\
        [--llama-bench-json llama_bench.json] [--bandwidth-json bandwidth.json]

Writes bench_gpu.json (every run, the best per server and level, ratios, and, when
given, the single-stream comparison with llama-bench tg128 and the bandwidth bound)
and one log per server start into --out-dir.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def level(url: str, concurrency: int, rounds: int, max_tokens: int) -> dict:
    """One level of the plain workload with localllm.bench, flattened to the fields we report."""
    from localllm.bench.runner import RunConfig, num_requests_for, run_level
    from localllm.bench.workloads import Length, WorkloadConfig

    workload = WorkloadConfig(max_tokens=Length(max_tokens, max_tokens))
    s = asyncio.run(run_level(RunConfig(url), workload, concurrency, num_requests_for(concurrency, rounds)))
    return {"concurrency": concurrency, "requests": s["num_requests"], "errors": s["num_errors"],
            "first_error": s["first_error"], "output_tokens_per_s": s["output_tokens_per_s"],
            "ttft_p50_ms": s["ttft_ms"]["p50"], "ttft_p95_ms": s["ttft_ms"]["p95"],
            "itl_p50_ms": s["itl_ms"]["p50"], "itl_p95_ms": s["itl_ms"]["p95"],
            "mean_tokens": s["mean_output_tokens"], "token_count_source": s["token_count_source"], "summary": s}


@contextmanager
def server(command: list[str], url: str, ready_path: str, log_path: Path, cwd: str, timeout_s: float = 300):
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{command[0]} exited with {process.returncode}; see {log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} not ready after {timeout_s} s; see {log_path}")
                try:
                    with urllib.request.urlopen(url + ready_path, timeout=1) as response:
                        if response.status == 200:
                            break
                except OSError:
                    time.sleep(0.25)
            time.sleep(0.5)
            if process.poll() is not None:  # e.g. its port was taken and another server answered
                raise RuntimeError(f"{command[0]} exited with {process.returncode}; see {log_path}")
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def bytes_read_per_token(model: str, llama_cpp: Path) -> dict:
    """Weight bytes a decode step reads: every tensor but token_embd (only its rows are read)."""
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    import gguf

    reader = gguf.GGUFReader(model)
    total = sum(int(t.n_bytes) for t in reader.tensors)
    embd = sum(int(t.n_bytes) for t in reader.tensors if t.name == "token_embd.weight")
    return {"file_bytes": os.path.getsize(model), "tensor_bytes": total, "bytes_read_per_token": total - embd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--parallel", type=int, default=64)
    parser.add_argument("--ctx", type=int, default=32768)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ngl", default="99", help="llama-server -ngl (localllm uses the memory plan: auto)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=3, help="requests per level = rounds x concurrency")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of the two servers")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out-dir", default=".")
    parser.add_argument("--localllm-root", default=str(ROOT), help="folder holding the localllm package under test")
    parser.add_argument("--llama-cpp", type=Path, default=ROOT / ".devcarry/llama_cpp_python/vendor/llama.cpp")
    parser.add_argument("--llama-bench-json", help="llama-bench -o json output, for the tg128 comparison")
    parser.add_argument("--bandwidth-json", help="copy_bandwidth.py output, for the bandwidth bound")
    parser.add_argument("--only", choices=["llama-server", "localllm"], help="run one server only")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.localllm_root).resolve()))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = str(args.threads)
    servers = {
        "llama-server": ([args.llama_server, "-m", args.model, "-np", str(args.parallel), "-c", str(args.ctx),
                          "-t", threads, "-tb", threads, "-ngl", args.ngl, "--port", "18181",
                          "--host", "127.0.0.1"], "http://127.0.0.1:18181", "/health", str(ROOT)),
        "localllm": ([sys.executable, "-m", "localllm.cli", "serve", "--model", args.model, "--port", "18182",
                      "--parallel", str(args.parallel), "--ctx", str(args.ctx), "--threads", threads,
                      "--log-level", "info"], "http://127.0.0.1:18182", "/ready", args.localllm_root),
    }
    if args.only:
        servers = {args.only: servers[args.only]}
    runs: list[dict] = []
    for repeat in range(args.repeats):
        for name, (command, url, ready, cwd) in servers.items():
            started = time.monotonic()
            with server(command, url, ready, out_dir / f"bench_{name}_{repeat}.log", cwd):
                load_s = time.monotonic() - started
                for concurrency in args.concurrency:
                    row = level(url, concurrency, args.rounds, args.max_tokens)
                    runs.append({"server": name, "repeat": repeat, "load_s": round(load_s, 1), **row})
                    print(f"[{repeat}] {name:12} conc {concurrency:>3}: {_f(row['output_tokens_per_s'], 8, 1)} tok/s  "
                          f"ttft p50 {_f(row['ttft_p50_ms'], 6, 0)} p95 {_f(row['ttft_p95_ms'], 6, 0)} ms  "
                          f"itl p50 {_f(row['itl_p50_ms'], 5, 1)} p95 {_f(row['itl_p95_ms'], 5, 1)} ms  "
                          f"mean tokens {_f(row['mean_tokens'], 0, 1)}  errors {row['errors']} {row['first_error'] or ''}",
                          flush=True)
                    # Written after every level: a server that dies later loses nothing measured so far.
                    (out_dir / "bench_gpu.json").write_text(json.dumps(summarise(args, runs), indent=1))
    report = summarise(args, runs)
    (out_dir / "bench_gpu.json").write_text(json.dumps(report, indent=1))
    print_table(report)


def _f(value: float | None, width: int, digits: int) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def summarise(args: argparse.Namespace, runs: list[dict]) -> dict:
    best = {}
    for row in runs:
        if not row["output_tokens_per_s"] or row["itl_p50_ms"] is None:
            continue  # a level whose requests all failed
        key = f"{row['server']}@{row['concurrency']}"
        if key not in best or row["output_tokens_per_s"] > best[key]["output_tokens_per_s"]:
            best[key] = row
    ratios = {}
    for level in args.concurrency:
        ref, ours = best.get(f"llama-server@{level}"), best.get(f"localllm@{level}")
        if ref and ours:
            ratios[level] = {
                "tok_s_ratio": round(ours["output_tokens_per_s"] / ref["output_tokens_per_s"], 3),
                "itl_p50_ratio": round(ours["itl_p50_ms"] / ref["itl_p50_ms"], 3),
                "ttft_p50_ratio": round(ours["ttft_p50_ms"] / ref["ttft_p50_ms"], 3),
            }
    report = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "runs": runs, "best": best, "ratios_localllm_over_llama_server": ratios}
    single = best.get("localllm@1")
    if args.llama_bench_json and Path(args.llama_bench_json).is_file():
        rows = json.loads(Path(args.llama_bench_json).read_text())
        tg = [r for r in rows if r.get("n_gen") == 128 and r.get("n_prompt") == 0]
        report["llama_bench_tg128"] = [{"flash_attn": r.get("flash_attn"), "avg_ts": r.get("avg_ts"),
                                        "stddev_ts": r.get("stddev_ts")} for r in tg]
        if single and tg:
            best_tg = max(r["avg_ts"] for r in tg)
            report["single_stream_vs_tg128"] = round(single["output_tokens_per_s"] / best_tg, 3)
            # Decode rate alone: one token per ITL (the TTFT and HTTP set-up excluded).
            report["single_stream_itl_rate_vs_tg128"] = round(1000 / single["itl_p50_ms"] / best_tg, 3)
    if args.bandwidth_json and Path(args.bandwidth_json).is_file():
        bandwidth = json.loads(Path(args.bandwidth_json).read_text())
        sizes = bytes_read_per_token(args.model, args.llama_cpp)
        bound = bandwidth["read_plus_write_gb_per_s"] * 1e9 / sizes["bytes_read_per_token"]
        report["bandwidth_bound"] = {**sizes, "copy_gb_per_s": bandwidth["read_plus_write_gb_per_s"],
                                     "tokens_per_s_bound": round(bound, 1)}
        if single:
            report["bandwidth_bound"]["single_stream_fraction"] = round(single["output_tokens_per_s"] / bound, 3)
            report["bandwidth_bound"]["single_stream_itl_fraction"] = round(1000 / single["itl_p50_ms"] / bound, 3)
    return report


def print_table(report: dict) -> None:
    print("\nbest of repeats; ratio = localllm / llama-server")
    print(f"{'conc':>4} {'server':>12} {'tok/s':>8} {'ttft p50':>9} {'ttft p95':>9} {'itl p50':>8} {'itl p95':>8}")
    for key, row in sorted(report["best"].items(), key=lambda kv: (kv[1]["concurrency"], kv[1]["server"])):
        print(f"{row['concurrency']:>4} {row['server']:>12} {_f(row['output_tokens_per_s'], 8, 1)} "
              f"{_f(row['ttft_p50_ms'], 7, 0)}ms {_f(row['ttft_p95_ms'], 7, 0)}ms {_f(row['itl_p50_ms'], 6, 1)}ms "
              f"{_f(row['itl_p95_ms'], 6, 1)}ms")
    for level, ratio in report["ratios_localllm_over_llama_server"].items():
        print(f"conc {level}: {ratio}")
    for key in ("llama_bench_tg128", "single_stream_vs_tg128", "single_stream_itl_rate_vs_tg128", "bandwidth_bound"):
        if key in report:
            print(f"{key}: {report[key]}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
