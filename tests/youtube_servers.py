"""Loopback stand-ins for what a real YouTube build meets: a video site that wants a cookie, has caption
tracks and blocks for a while, and an HTTP proxy with a password that counts what passes through it.

VideoSite routes (yt-dlp's generic extractor reads the page's <video> and <track> elements):
  /watch/<name>      an HTML page: <title>, description meta, a <video> playing /media/<name> and a
                     <track kind="subtitles" srclang="en"> at /captions/<stem>.vtt (YouTube-style rolling
                     cues, each repeating the previous line)
  /media/<name>      the file <name> from the served directory
  /captions/<stem>.vtt  the caption track
With site.cookie = (name, value) set, every route answers 403 to a request without that cookie. With
site.block_watch = n, the first n page requests answer 429 Too Many Requests (a rate limit that ends).
Each request is logged as a Visit: path, whether it came through the proxy (its Via header), its cookie.
"""

from __future__ import annotations

import base64
import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

PROXY_VIA = "1.1 cosmo-test-proxy"
CAPTIONS_VTT = """WEBVTT
Kind: captions
Language: en

00:00:00.000 --> 00:00:01.000
first we cut the board

00:00:01.000 --> 00:00:02.000
first we cut the board
then we sand the edges

00:00:02.000 --> 00:00:02.010
then we sand the edges

00:00:02.010 --> 00:00:03.000
then we sand the edges
and paint it blue
"""
CAPTION_LINES = ["first we cut the board", "then we sand the edges", "and paint it blue"]
TITLE = "Building a birdhouse"
DESCRIPTION = "Cut, sand and paint a birdhouse in three steps."


@dataclass
class Visit:
    path: str
    via_proxy: bool
    cookie: str


class VideoSite(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _SiteHandler)
        self.root = Path(root)
        self.cookie: tuple[str, str] | None = None
        self.block_watch = 0
        self.visits: list[Visit] = []
        self._lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{path.lstrip('/')}"

    def visit(self, visit: Visit) -> int:
        """Log a visit; returns how many page requests came before it (for block_watch)."""
        with self._lock:
            earlier = sum(1 for v in self.visits if v.path.startswith("/watch/"))
            self.visits.append(visit)
            return earlier


class _SiteHandler(BaseHTTPRequestHandler):
    server: VideoSite
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        cookie = self.headers.get("Cookie") or ""
        earlier = self.server.visit(Visit(path, self.headers.get("Via") == PROXY_VIA, cookie))
        wanted = self.server.cookie
        if wanted and f"{wanted[0]}={wanted[1]}" not in cookie:
            return self._send(403, b"sign in", "text/plain")
        if path.startswith("/watch/"):
            if earlier < self.server.block_watch:
                return self._send(429, b"Too Many Requests", "text/plain")
            name = path.removeprefix("/watch/")
            stem = Path(name).stem
            page = (
                f"<!DOCTYPE html><html><head><title>{TITLE}</title>"
                f'<meta property="og:description" content="{DESCRIPTION}"></head><body>'
                f'<video controls><source src="/media/{name}" type="video/mp4">'
                f'<track kind="subtitles" srclang="en" label="English" src="/captions/{stem}.vtt"></video>'
                "</body></html>"
            )
            return self._send(200, page.encode(), "text/html; charset=utf-8")
        if path.startswith("/media/"):
            file = self.server.root / path.removeprefix("/media/")
            if file.is_file():
                return self._send(200, file.read_bytes(), "video/mp4")
        if path.startswith("/captions/"):
            return self._send(200, CAPTIONS_VTT.encode(), "text/vtt")
        self._send(404, b"Not Found", "text/plain")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class CountingProxy(ThreadingHTTPServer):
    """A forward HTTP proxy that wants user:password (Proxy-Authorization: Basic) and counts requests."""

    daemon_threads = True

    def __init__(self, user: str, password: str):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.user, self.password = user, password
        self.forwarded: list[str] = []
        self.refused = 0

    @property
    def url(self) -> str:
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: CountingProxy
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.headers.get("Proxy-Authorization") != f"Basic {self.server.credentials}":
            self.server.refused += 1
            self.send_response(407)
            self.send_header("Proxy-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        target = urlsplit(self.path)
        self.server.forwarded.append(target.path)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-authorization", "connection")}
        headers["Via"] = PROXY_VIA
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        upstream.request("GET", target.path + (f"?{target.query}" if target.query else ""), headers=headers)
        response = upstream.getresponse()
        body = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        upstream.close()


@contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def cookies_file(path: Path, name: str, value: str) -> Path:
    """A Netscape cookies file holding one cookie for 127.0.0.1."""
    path.write_text(f"# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\t{name}\t{value}\n")
    return path
