"""Time to first token for a ~1,000-token shared prefix after a server restart: with the
prefix state (KV state) saved on disk by the previous run, against a cold start.

    .venv/bin/python scripts/bench_prefix_restart.py [--repeats 3]

Each measurement starts a fresh `localllm serve` process. The response cache is
bypassed (`"cache": false`), so only the KV state can help.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREAMBLE = "You are the help desk of a hardware shop. " + " ".join(
    f"Rule {i}: a customer may return item class {i} within {i + 14} days if it is unused and boxed."
    for i in range(45))
PORT = 18093


def start(cache_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "LOCALLLM_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "localllm.cli", "serve", "--port", str(PORT), "--parallel", "2",
                                "--ctx", "8192", "--threads", "2"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/ready", timeout=1) as response:
                if response.status == 200:
                    warm_up()
                    return process
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def warm_up() -> None:
    """A short unrelated request, so neither measurement pays the first decode's set-up."""
    body = json.dumps({"prompt": "Hello", "max_tokens": 2, "cache": False}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{PORT}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=60).read()


def ttft_s(question: str) -> tuple[float, int]:
    body = json.dumps({"prompt": PREAMBLE + f"\nQuestion: {question}\nAnswer:", "max_tokens": 1, "stream": True,
                       "temperature": 0, "cache": False, "stream_options": {"include_usage": True}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{PORT}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    first = None
    cached = 0
    with urllib.request.urlopen(request, timeout=120) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - started
            if chunk.get("usage"):
                cached = chunk["usage"]["prompt_tokens_details"]["cached_tokens"]
    return (first if first is not None else time.perf_counter() - started), cached


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cold, warm = [], []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as saved, tempfile.TemporaryDirectory() as empty:
            server = start(Path(saved))
            ttft_s(f"first visit {i}")  # evaluates the preamble and saves its KV state
            stop(server)
            server = start(Path(saved))  # a restart: no live slot holds the preamble any more
            restored, cached = ttft_s(f"can I return a drill after {i + 20} days?")
            stop(server)
            server = start(Path(empty))
            cold_s, _ = ttft_s(f"can I return a drill after {i + 20} days?")
            stop(server)
        warm.append(restored)
        cold.append(cold_s)
        print(f"run {i}: cold TTFT {cold_s * 1000:.0f} ms, after restart with saved prefix {restored * 1000:.0f} ms "
              f"({cached} prompt tokens restored)", flush=True)
    ratio = statistics.median(warm) / statistics.median(cold)
    print(f"median: cold {statistics.median(cold) * 1000:.0f} ms, restored {statistics.median(warm) * 1000:.0f} ms, "
          f"ratio {ratio:.2f} (target <= 0.30)")


if __name__ == "__main__":
    main()
