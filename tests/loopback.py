"""A loopback HTTP server for download tests: real files with Range support, plus misbehaving routes.

Routes (paths are relative to the server root):
  /files/<name>              the file <name> from the served directory (HEAD and Range requests work)
  /flaky/<plan>/<name>       request k of this path follows letter k of plan: 'x' answers 503, 'r' 429
                             (too many requests), 'o' serves <name>; requests past the plan serve <name>
                             (so /flaky/xx/a.mp4 fails twice)
  /chunked/<name>            serves <name> without Content-Length (size unknown until the end)
  /slow-start/<s>/<name>     waits s seconds before sending anything, then serves <name>
  /trickle.mp4               video headers with a large Content-Length, then 1 byte per second
  /page.mp4                  an HTML page behind a .mp4 name
  /watch/<s>/<name>          an HTML page whose JSON-LD VideoObject points at /files/<name>, gives its
                             size and says it lasts s seconds (metadata yt-dlp reads before downloading)
  /two-videos/<name>         an HTML page with two <video> elements playing /files/<name> (a playlist)
  anything else              404

Every request is logged as "METHOD /path" (LoopbackServer.requests) with its time (request_times).
"""

from __future__ import annotations

import json
import mimetypes
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TRICKLE_CONTENT_LENGTH = 10_000_000
HTML_PAGE = b"<!DOCTYPE html><html><head><title>Not a video</title></head><body><p>hello</p></body></html>"


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = Path(root)
        self._log: list[tuple[float, str]] = []  # (time.monotonic(), "METHOD /path")
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._flaky_seen: dict[str, int] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def log_request_line(self, line: str) -> None:
        with self._lock:
            self._log.append((time.monotonic(), line))

    @property
    def requests(self) -> list[str]:
        with self._lock:
            return [line for _, line in self._log]

    def request_times(self, path: str) -> list[float]:
        """time.monotonic() of every request (any method) for this path, in order."""
        with self._lock:
            return [at for at, line in self._log if line.split(" ", 1)[1] == path]

    def count(self, path: str) -> int:
        return len(self.request_times(path))

    def flaky_attempt(self, path: str) -> int:
        with self._lock:
            self._flaky_seen[path] = self._flaky_seen.get(path, 0) + 1
            return self._flaky_seen[path]


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._route(send_body=False)

    def do_GET(self) -> None:
        self._route(send_body=True)

    def _route(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        self.server.log_request_line(f"{self.command} {path}")
        try:
            if path.startswith("/files/"):
                self._serve_file(path[len("/files/") :], send_body)
            elif match := re.fullmatch(r"/flaky/([oxr]+)/(.+)", path):
                plan, attempt = match.group(1), self.server.flaky_attempt(path)
                if attempt <= len(plan) and plan[attempt - 1] == "x":
                    self._send_error(503, "Service Unavailable")
                elif attempt <= len(plan) and plan[attempt - 1] == "r":
                    self._send_error(429, "Too Many Requests")
                else:
                    self._serve_file(match.group(2), send_body)
            elif path.startswith("/chunked/"):
                self._serve_file(path[len("/chunked/") :], send_body, with_length=False)
            elif match := re.fullmatch(r"/slow-start/([\d.]+)/(.+)", path):
                self.server.stopping.wait(float(match.group(1)))
                self._serve_file(match.group(2), send_body)
            elif path == "/trickle.mp4":
                self._trickle(send_body)
            elif path == "/page.mp4":
                self._send_bytes(HTML_PAGE, "text/html; charset=utf-8", send_body)
            elif match := re.fullmatch(r"/two-videos/(.+)", path):
                src = self.server.url(f"files/{match.group(1)}")
                page = f'<html><body><video src="{src}"></video><video src="{src}?again"></video></body></html>'
                self._send_bytes(page.encode(), "text/html; charset=utf-8", send_body)
            elif match := re.fullmatch(r"/watch/(\d+)/(.+)", path):
                self._watch_page(int(match.group(1)), match.group(2), send_body)
            else:
                self._send_error(404, "Not Found")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, which several tests do on purpose

    def _serve_file(self, name: str, send_body: bool, with_length: bool = True) -> None:
        file = self.server.root / name
        if "/" in name or not file.is_file():
            self._send_error(404, "Not Found")
            return
        data = file.read_bytes()
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        byte_range = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", byte_range or "")
        if not with_length or not match:
            self._send_bytes(data, content_type, send_body, with_length=with_length)
            return
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
        if start >= len(data) or start > end:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206)
        self.send_header("Content-Type", content_type)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if send_body:
            self.wfile.write(data[start : end + 1])

    def _send_bytes(self, data: bytes, content_type: str, send_body: bool, with_length: bool = True) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if with_length:
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if send_body:
            # HTTP/1.0 without Content-Length: the body ends when the connection closes.
            for offset in range(0, len(data), 64 * 1024):
                self.wfile.write(data[offset : offset + 64 * 1024])

    def _watch_page(self, duration_s: int, name: str, send_body: bool) -> None:
        file = self.server.root / name
        if "/" in name or not file.is_file():
            self._send_error(404, "Not Found")
            return
        video_object = {
            "@context": "https://schema.org",
            "@type": "VideoObject",
            "name": "A how-to video",
            "duration": f"PT{duration_s}S",
            "contentUrl": self.server.url(f"files/{name}"),
            "contentSize": str(file.stat().st_size),
            "uploadDate": "2024-01-01",
        }
        page = (
            "<!DOCTYPE html><html><head><title>A how-to video</title>"
            f'<script type="application/ld+json">{json.dumps(video_object)}</script>'
            "</head><body><p>watch</p></body></html>"
        )
        self._send_bytes(page.encode(), "text/html; charset=utf-8", send_body)

    def _send_error(self, code: int, reason: str) -> None:
        body = f"{code} {reason}".encode()
        self.send_response(code, reason)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _trickle(self, send_body: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(TRICKLE_CONTENT_LENGTH))
        self.end_headers()
        if not send_body:
            return
        for _ in range(TRICKLE_CONTENT_LENGTH):
            self.wfile.write(b"\0")
            self.wfile.flush()
            if self.server.stopping.wait(1.0):
                return


@contextmanager
def serve_directory(root: Path) -> Iterator[LoopbackServer]:
    """Serve root on 127.0.0.1 at an ephemeral port for the duration of the block."""
    server = LoopbackServer(root)
    thread = threading.Thread(target=server.serve_forever, name="loopback-http", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def refused_url(path: str = "video.mp4") -> str:
    """A URL on a loopback port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/{path}"
