"""A real HTTP server on loopback that serves feed files the way a blog host does.

It answers conditional GETs (If-None-Match / If-Modified-Since) with 304, counts requests per
path and keeps the headers each one sent. `/missing.xml` is a 404 and `/slow.xml` answers only
after SLOW_SECONDS, so a client with a shorter timeout gives up. `/drip.xml` answers at once and
then sends atom.xml's last DRIP_BYTES one every DRIP_SECONDS: no single read waits long, the
whole download takes DRIP_BYTES * DRIP_SECONDS; it records in `written` how many of those bytes
it got out before the client hung up (all of them if it never did). REDIRECTS are answered with a 302 to their
target: /moved.xml to ghost.xml, /to-ftp.xml to an ftp:// URL, /loop.xml to itself; a test
adds to `redirects` when a site starts redirecting.
HEAVY_REDIRECTS also redirect to ghost.xml, with a body that a client must not read:
/heavy-redirect.xml announces HEAVY_BYTES, /endless-redirect.xml never ends; each records in
`written` how many bytes it got out before the client hung up.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "feeds"
SLOW_SECONDS = 3.0
DRIP_SECONDS, DRIP_BYTES = 0.3, 20
REDIRECTS = {"/moved.xml": "/ghost.xml", "/to-ftp.xml": "ftp://127.0.0.1:1/feed.xml",
             "/loop.xml": "/loop.xml"}
HEAVY_REDIRECTS = {"/heavy-redirect.xml": "/ghost.xml", "/endless-redirect.xml": "/ghost.xml"}
HEAVY_BYTES = 1024 ** 3
TYPES = {".xml": "application/rss+xml; charset=utf-8", ".html": "text/html; charset=utf-8"}


@dataclass
class FeedServer:
    host: str
    port: int
    files: dict[str, bytes] = field(default_factory=dict)  # path -> body; edit to "publish"
    hits: Counter[str] = field(default_factory=Counter)
    headers: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    modified: dict[str, str] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=lambda: dict(REDIRECTS))  # path -> target
    written: dict[str, int] = field(default_factory=dict)  # path -> bytes sent of a heavy or dripped body

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}/{path.lstrip('/')}"

    def publish(self, path: str, body: bytes) -> None:
        """Replace a file: a new ETag and a later Last-Modified, as a blog republishing would."""
        self.files[path] = body
        self.modified[path] = formatdate(time.time() + 60 * len(self.modified), usegmt=True)


@contextmanager
def serve_feeds() -> Iterator[FeedServer]:
    state = FeedServer("127.0.0.1", 0)
    for file in FIXTURES.iterdir():
        state.files["/" + file.name] = file.read_bytes()
        state.modified["/" + file.name] = "Sat, 21 Nov 2026 10:00:00 GMT"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            state.hits[path] += 1
            state.headers.append((path, dict(self.headers.items())))
            if path == "/slow.xml":
                time.sleep(SLOW_SECONDS)
                path = "/hugo.xml"
            if path in state.redirects:
                self.send_response(302)
                self.send_header("Location", state.redirects[path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path in HEAVY_REDIRECTS:
                self.heavy_redirect(path)
                return
            if path == "/drip.xml":
                self.drip(state.files["/atom.xml"])
                return
            body = state.files.get(path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            modified = state.modified[path]
            if (self.headers.get("If-None-Match") == etag
                    or (self.headers.get("If-None-Match") is None
                        and self.headers.get("If-Modified-Since") == modified)):
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", TYPES.get(Path(path).suffix, "application/xml"))
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", modified)
            self.end_headers()
            self.wfile.write(body)

        def drip(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", TYPES[".xml"])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:-DRIP_BYTES])
            sent = 0
            try:
                for byte in body[-DRIP_BYTES:]:
                    self.wfile.flush()
                    time.sleep(DRIP_SECONDS)
                    self.wfile.write(bytes([byte]))
                    sent += 1
            except OSError:
                pass  # the client gave up, as it should
            state.written["/drip.xml"] = sent

        def heavy_redirect(self, path: str) -> None:
            """A 302 with a large body: sent until the client hangs up, counting what went out."""
            self.send_response(302)
            self.send_header("Location", HEAVY_REDIRECTS[path])
            self.send_header("Content-Type", "text/html")
            if path == "/heavy-redirect.xml":
                self.send_header("Content-Length", str(HEAVY_BYTES))
            self.end_headers()  # without a length, the body lasts until the connection closes
            chunk, sent = b"moved " * 10_000, 0
            try:
                while path != "/heavy-redirect.xml" or sent < HEAVY_BYTES:
                    self.wfile.write(chunk)
                    sent += len(chunk)
            except OSError:
                pass  # the client hung up, as it should
            state.written[path] = sent

        def log_message(self, *_args: object) -> None:
            pass  # quiet test output

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True  # a stalled /slow.xml must not hold up the test's end
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
