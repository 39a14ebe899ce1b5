"""Latency of a response-cache hit for a 128-token answer, against the miss that filled it.

    .venv/bin/python scripts/bench_response_cache.py [--repeats 5]
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
PORT = 18094


def post(body: dict) -> tuple[float, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{PORT}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        response.read()
        return time.perf_counter() - started, response.headers["X-LocalLLM-Cache"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache_dir:
        env = {**os.environ, "LOCALLLM_CACHE_DIR": cache_dir}
        server = subprocess.Popen([sys.executable, "-m", "localllm.cli", "serve", "--port", str(PORT), "--threads", "2"],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/ready", timeout=1):
                        break
                except OSError:
                    time.sleep(0.1)
            misses, hits = [], []
            for i in range(args.repeats):
                body = {"messages": [{"role": "user", "content": f"Write a story, number {i}."}], "max_tokens": 128,
                        "temperature": 0, "ignore_eos": True}
                miss_s, state = post(body)
                assert state == "miss", state
                for _ in range(3):
                    hit_s, state = post(body)
                    assert state == "hit", state
                    hits.append(hit_s)
                misses.append(miss_s)
            print(f"128-token answer: miss median {statistics.median(misses) * 1000:.0f} ms, "
                  f"hit median {statistics.median(hits) * 1000:.1f} ms (p max {max(hits) * 1000:.1f} ms), "
                  f"{len(hits)} hits")
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
