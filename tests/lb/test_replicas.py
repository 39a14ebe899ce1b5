"""Two `localllm serve` replicas behind HAProxy on loopback: a bounded load of streamed
completions; SIGTERM to one replica mid-load lets its streams finish while new requests go
to the other, and no request fails."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from localllm.lb.haproxy import Endpoint, LbConfig, render
from tests.server.test_lifecycle import free_port

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("haproxy") is None,
                                 reason="haproxy is not installed (.ci/run installs Debian's package)")]
ROOT = Path(__file__).resolve().parents[2]
NUM_REQUESTS, CONCURRENCY, MAX_TOKENS = 12, 4, 32
CHECK_INTERVAL_MS = 500


def wait_until(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def get(url: str) -> tuple[int, str]:
    """(status, X-Localllm-Replica) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers.get("X-Localllm-Replica", "")
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("X-Localllm-Replica", "")


def start_replica(data_dir: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "localllm.cli", "serve", "--port", str(port), "--parallel", "2", "--ctx", "2048",
         "--threads", "1", "--data-dir", str(data_dir), "--drain-timeout", "60"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture
def cluster(data_dir: Path, model_path: Path, tmp_path: Path):
    """{replica name: process}, the balancer's URL; both replicas ready and in the pool."""
    ports = {"replica1": free_port(), "replica2": free_port()}
    replicas = {name: start_replica(data_dir, port) for name, port in ports.items()}
    lb_port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(render(LbConfig(replicas=tuple(Endpoint("127.0.0.1", p) for p in ports.values()),
                                      bind=Endpoint("127.0.0.1", lb_port), check_interval_ms=CHECK_INTERVAL_MS)))
    haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{lb_port}"
    try:
        for name, port in ports.items():
            wait_until(lambda: get(f"http://127.0.0.1:{port}/ready")[0] == 200, 120, f"{name} to load")
        seen: set[str] = set()
        wait_until(lambda: seen.add(get(url + "/ready")[1]) or seen >= set(ports), 30, "both replicas in the pool")
        yield replicas, url
    finally:
        for process in (*replicas.values(), haproxy):
            if process.poll() is None:
                process.kill()
            process.wait()


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@dataclass
class Outcome:
    index: int
    replica: str = ""
    start_s: float = 0.0
    first_token_s: float = 0.0
    end_s: float = 0.0
    num_text_chunks: int = 0
    done: bool = False
    error: str = ""
    events: list[str] = field(default_factory=list)


def stream_completion(url: str, index: int, first_chunk: threading.Event | None) -> Outcome:
    outcome = Outcome(index, start_s=time.monotonic())
    body = json.dumps({"prompt": f"Story {index}: once upon a time", "max_tokens": MAX_TOKENS, "stream": True,
                       "temperature": 0.8, "ignore_eos": True}).encode()  # sampled: never a cache hit
    request = urllib.request.Request(url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            outcome.replica = response.headers.get("X-Localllm-Replica", "")
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    outcome.done = True
                    continue
                if json.loads(data)["choices"][0]["text"]:
                    outcome.num_text_chunks += 1
                    if not outcome.first_token_s:
                        outcome.first_token_s = time.monotonic()
                        if first_chunk is not None and outcome.replica == "replica1":
                            first_chunk.set()
    except (OSError, ValueError) as exc:
        outcome.error = repr(exc)
    outcome.end_s = time.monotonic()
    return outcome


def test_sigterm_to_one_replica_mid_load_loses_no_request(cluster):
    replicas, url = cluster
    streaming_on_replica1 = threading.Event()
    started = time.monotonic()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        # The first wave fills both replicas; the kill comes once a stream runs on replica1.
        futures = [pool.submit(stream_completion, url, i, streaming_on_replica1 if i < CONCURRENCY else None)
                   for i in range(NUM_REQUESTS)]
        assert streaming_on_replica1.wait(120), "no stream reached replica1"
        killed_s = time.monotonic()
        replicas["replica1"].send_signal(signal.SIGTERM)
        port1 = int(replicas["replica1"].args[replicas["replica1"].args.index("--port") + 1])
        wait_until(lambda: not accepts(port1), 30, "replica1 to stop accepting")
        closed_s = time.monotonic()
        outcomes = [f.result() for f in futures]
    wall_s = time.monotonic() - started

    failed = [o for o in outcomes if o.error or not o.done or o.num_text_chunks != MAX_TOKENS]
    assert not failed, failed  # nothing failed, in flight on the killed replica or not
    in_flight = [o for o in outcomes if o.replica == "replica1" and o.start_s < killed_s]
    assert in_flight, "the kill came while replica1 streamed"
    after = [o for o in outcomes if o.start_s > closed_s]
    assert after and all(o.replica == "replica2" for o in after), [(o.index, o.replica) for o in after]
    assert replicas["replica1"].wait(timeout=60) == 0  # drained, then exited cleanly
    # The balancer took replica1 out of the pool: everything now goes to replica2.
    assert {get(url + "/ready") for _ in range(4)} == {(200, "replica2")}

    ttfts = sorted(o.first_token_s - o.start_s for o in outcomes)
    print(f"\nlb: {NUM_REQUESTS} streams x {MAX_TOKENS} tokens, {CONCURRENCY} at a time, through haproxy in "
          f"{wall_s:.1f} s ({NUM_REQUESTS * MAX_TOKENS / wall_s:.1f} tok/s aggregate); TTFT median "
          f"{ttfts[len(ttfts) // 2]:.2f} s, max {ttfts[-1]:.2f} s; {len(in_flight)} in flight on the killed "
          f"replica finished; {len(after)} started after replica1 stopped accepting, all on replica2")
