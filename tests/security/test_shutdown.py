"""Issue 14 item 28: shutdown never frees llama.cpp memory under a running call. SIGTERM to a
real `localllm serve` while a KV state is being saved and an embedding job runs (its client
gone, with no drain) exits 0 without a native crash, leaving each saved state whole or
absent; and `serve` runs with faulthandler, so a native crash leaves stacks in the log."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import diskcache
import pytest

from tests.server.test_lifecycle import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CRASH_SIGNS = ("Fatal Python error", "Segmentation fault", "core dumped", "Aborted")
LONG_PROMPT = "Topic: returns. " + " ".join(
    f"Policy {i}: items must be returned within {i + 10} days with a receipt." for i in range(40))
EMBED_INPUT = "The quick brown fox jumps over the lazy dog near the river bank. " * 110


def start_serve(data_dir: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALLLM_")}
    env.update(PYTHONUNBUFFERED="1", LOCALLLM_CACHE_DIR=str(tmp_path / "cache"), LOCALLLM_KV_CACHE_MIN_TOKENS="256")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "localllm.cli", "serve", "--port", str(port), "--parallel", "2", "--ctx", "4096",
             "--threads", "2", "--data-dir", str(data_dir), *extra],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    return process, f"http://127.0.0.1:{port}", log_path


def wait_until(url: str, process: subprocess.Popen, log_path: Path) -> None:
    for _ in range(1800):
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            if process.poll() is not None:
                break
            time.sleep(0.1)
    process.kill()
    raise AssertionError("server did not answer:\n" + log_path.read_text())


def post(url: str, body: dict, timeout_s: float = 300) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def saved_states_are_whole_or_absent(kv_dir: Path) -> int:
    """Checks every entry against its sealed header (format of localllm/cache/sealed.py, read
    here independently); returns how many there are."""
    header = struct.Struct("<4s4sH16sQ32s")
    count = 0
    with diskcache.Cache(str(kv_dir)) as cache:
        for key in cache.iterkeys():
            if not (isinstance(key, str) and key.startswith("kv1:")):
                continue
            blob = cache.get(key)
            magic, kind, _, _, length, checksum = header.unpack_from(blob)
            payload = blob[header.size:]
            assert (magic, kind, len(payload)) == (b"LLMC", b"KVST", length), key
            assert hashlib.sha256(payload).digest() == checksum, key
            count += 1
    return count


def test_sigterm_while_a_state_is_saved_and_an_embedding_runs_exits_cleanly(data_dir: Path, model_path: Path,
                                                                          tmp_path: Path):
    process, url, log_path = start_serve(data_dir, tmp_path, "--drain-timeout", "0.5")
    try:
        wait_until(url + "/ready", process, log_path)
        embedding = threading.Thread(target=lambda: _swallow(post, url + "/v1/embeddings",
                                                             {"input": [EMBED_INPUT] * 8}), daemon=True)
        embedding.start()
        time.sleep(1.0)  # the embedding job is inside llama_decode on its own context
        answer = post(url + "/v1/completions", {"prompt": LONG_PROMPT, "max_tokens": 1, "temperature": 0,
                                                  "cache": False})
        assert answer["usage"]["prompt_tokens"] >= 256  # long enough: its KV state was queued for saving
        process.send_signal(signal.SIGTERM)  # while the state is written and the embedding runs
        code = process.wait(timeout=120)
    except BaseException:
        process.kill()
        print(log_path.read_text())
        raise
    log = log_path.read_text()
    assert code == 0, log
    assert not any(sign in log for sign in CRASH_SIGNS), log
    assert saved_states_are_whole_or_absent(tmp_path / "cache" / "kv") <= 1


def test_serve_runs_with_faulthandler_so_a_native_crash_leaves_stacks(data_dir: Path, model_path: Path,
                                                                      tmp_path: Path):
    process, url, log_path = start_serve(data_dir, tmp_path)
    try:
        wait_until(url + "/health", process, log_path)
        process.send_signal(signal.SIGSEGV)  # what a crash inside llama.cpp raises
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    log = log_path.read_text()
    assert code == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in log and 'File "' in log, log


def _swallow(call, *args) -> None:
    try:
        call(*args)
    except (OSError, urllib.error.HTTPError):
        pass  # the server went away mid-request: expected
