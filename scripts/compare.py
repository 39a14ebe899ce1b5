"""Side-by-side: llama-server and `localllm serve` on the same model, threads, slots and
context, the same workloads, alternating, in one run; prints both and the ratios.

    scripts/build_llama_server.sh            # once: llama-server from the same llama.cpp
    .venv/bin/python scripts/compare.py --llama-server /tmp/llama-server-build/build/bin/llama-server
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import run_level  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def server(command: list[str], url: str):
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                # /v1/models answers 200 on both servers only once the model is loaded.
                with urllib.request.urlopen(url + "/v1/models", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"{command[0]} did not start")
        yield
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--model", help="GGUF path (default: the bundled model in the localllm store)")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternations of the two servers")
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    model = args.model or _bundled_model_path()
    common = ["--parallel", str(args.parallel), "--ctx", str(args.ctx), "--threads", str(args.threads)]
    servers = {
        "llama-server": ([args.llama_server, "-m", model, "-np", str(args.parallel), "-c", str(args.ctx),
                          "-t", str(args.threads), "-tb", str(args.threads), "--port", "18081", "--host",
                          "127.0.0.1", "-ngl", "0"], "http://127.0.0.1:18081"),
        "localllm": ([sys.executable, "-m", "localllm.cli", "serve", "--model", model, "--port", "18082",
                      *common], "http://127.0.0.1:18082"),
    }
    results: dict[tuple[str, int], list[dict]] = {}
    for repeat in range(args.repeats):
        for name, (command, url) in servers.items():
            with server(command, url):
                for level in args.concurrency:
                    row = asyncio.run(run_level(url, level, args.rounds, args.max_tokens, None))
                    results.setdefault((name, level), []).append(row)
                    print(f"[{repeat}] {name:12} conc {level}: {row['output_tokens_per_s']:.1f} tok/s, "
                          f"ttft p50 {row['ttft_p50_ms']:.0f} ms, itl p50 {row['itl_p50_ms']:.1f} ms, "
                          f"errors {row['errors']} {row['first_error'] or ''}", flush=True)
    print("\nbest of runs per server and concurrency; ratio = localllm / llama-server")
    print(f"{'conc':>4} {'llama-server tok/s':>19} {'localllm tok/s':>15} {'ratio':>6} {'itl ratio':>9} {'ttft ratio':>10}")
    for level in args.concurrency:
        ref = max(results[("llama-server", level)], key=lambda r: r["output_tokens_per_s"])
        ours = max(results[("localllm", level)], key=lambda r: r["output_tokens_per_s"])
        print(f"{level:>4} {ref['output_tokens_per_s']:>19.1f} {ours['output_tokens_per_s']:>15.1f} "
              f"{ours['output_tokens_per_s'] / ref['output_tokens_per_s']:>6.2f} "
              f"{ours['itl_p50_ms'] / ref['itl_p50_ms']:>9.2f} {ours['ttft_p50_ms'] / ref['ttft_p50_ms']:>10.2f}")


def _bundled_model_path() -> str:
    from localllm.config import Config
    from localllm.models.registry import load_catalogue
    from localllm.models.store import ModelStore

    path, _ = ModelStore(Config.load().data_dir, load_catalogue()).resolve("gemma3-270m")
    return str(path)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
