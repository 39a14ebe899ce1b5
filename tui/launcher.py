"""`localllm tui`: optionally start `localllm serve` in the background, then run the app.

The server is started as a separate process (`python -m localllm.cli serve`), never imported.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from tui.client import DEFAULT_URL, Client


def start_server(url: str, api_key: str | None) -> tuple[subprocess.Popen[bytes], Path]:
    """Starts the server on the URL's host and port; returns the process and its log file."""
    parts = urlsplit(url)
    command = [sys.executable, "-m", "localllm.cli", "serve", "--host", parts.hostname or "127.0.0.1",
               "--port", str(parts.port or 8080)]
    if api_key:
        command += ["--api-key", api_key]
    log_path = Path(tempfile.gettempdir()) / f"localllm-tui-server-{parts.port or 8080}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return process, log_path


def run_tui(url: str = DEFAULT_URL, api_key: str | None = None, start: bool = False) -> int:
    from tui.app import LocalLLMApp  # Textual loads only when the TUI runs

    process = None
    if start:
        process, log_path = start_server(url, api_key)
        print(f"started localllm serve (pid {process.pid}); log: {log_path}", file=sys.stderr)
    try:
        LocalLLMApp(Client(url, api_key)).run()
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0
