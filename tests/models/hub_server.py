"""A real HTTP server on loopback that speaks enough of the hub's file protocol for
huggingface_hub: HEAD/GET /{org}/{repo}/resolve/{revision}/{file} with X-Repo-Commit,
ETag/X-Linked-Etag/X-Linked-Size, and Range requests (206 + Content-Range)."""
from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_PATH_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


@dataclass
class Served:
    path: Path
    sha256: str


@dataclass
class HubState:
    files: dict[tuple[str, str], Served] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    cut_first_get_at: int | None = None
    """Drop the connection after this many body bytes of the first GET."""
    gets: int = 0
    block_delay_s: float = 0.0
    """Pause after each MiB of a GET body: a slow hub, to leave mid-download."""
    advertised_sizes: dict[tuple[str, str], int] = field(default_factory=dict)
    """X-Linked-Size to claim for a file instead of its real size (a hub that lies)."""
    active_gets: int = 0
    """GET bodies being sent now."""

    def add(self, repo: str, file: str, path: Path, sha256: str | None = None) -> None:
        digest = sha256 or hashlib.sha256(path.read_bytes()).hexdigest()
        self.files[(repo, file)] = Served(path, digest)

    def range_headers(self) -> list[str]:
        return [h["Range"] for m, _, h in self.requests if m == "GET" and "Range" in h]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        self.state.requests.append((self.command, self.path, dict(self.headers)))
        match = _PATH_RE.match(self.path)
        served = self.state.files.get((match["repo"], match["file"])) if match else None
        if served is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = served.path.stat().st_size
        start = _range_start(self.headers.get("Range")) if body else 0
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{served.sha256}"')
        self.send_header("X-Linked-Etag", f'"{served.sha256}"')
        self.send_header("X-Linked-Size", str(self.state.advertised_sizes.get((match["repo"], match["file"]), size)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(size - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        if body:
            self._send_body(served.path, start)

    def _send_body(self, path: Path, start: int) -> None:
        self.state.gets += 1
        self.state.active_gets += 1
        try:
            self._send_blocks(path, start)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the downloader hung up
        finally:
            self.state.active_gets -= 1

    def _send_blocks(self, path: Path, start: int) -> None:
        limit = self.state.cut_first_get_at if self.state.gets == 1 else None
        sent = 0
        with path.open("rb") as f:
            f.seek(start)
            while block := f.read(1 << 20):
                if limit is not None and sent + len(block) > limit:
                    self.wfile.write(block[: limit - sent])
                    self.wfile.flush()
                    self.close_connection = True  # a cut connection, mid-body
                    return
                self.wfile.write(block)
                sent += len(block)
                if self.state.block_delay_s:
                    self.wfile.flush()
                    time.sleep(self.state.block_delay_s)


def _range_start(header: str | None) -> int:
    match = re.fullmatch(r"bytes=(\d+)-", header or "")
    return int(match.group(1)) if match else 0


class HubServer:
    def __init__(self) -> None:
        self.state = HubState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
