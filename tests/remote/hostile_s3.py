"""A hostile S3 stand-in for tests: a small ``http.server`` on 127.0.0.1, NOT a real S3 server.

It speaks just enough of the S3 REST protocol, path-style and without checking signatures,
for Kiln's reads (GET with ``Range``, HEAD, ListObjectsV2), and misbehaves on demand, per
object key, in the ways a broken or hostile server can:

    honest           correct answers (206 with Content-Range for ranged GETs)
    trickle-headers  a status line, then the headers one byte at a time, forever
    trickle-body     correct headers, then the body one byte at a time, forever
    long             GET ignores Range: 200 with the object plus ``extra`` bytes (a GET longer than HEAD)
    endless          GET ignores Range: 200, no Content-Length, zeros until the client hangs up
    no-range         GET ignores Range: 200 with exactly the object (a server without Range support)
    wrong-range      GET answers every Range from byte 0: a 206 of the asked length, Content-Range
                     saying so (a server that drops the range's start)
    short            GET sends ``extra`` bytes fewer than the object (HEAD still says the full size)

``default`` applies to every request (HEAD and LIST included) whose key has no mode of its
own. What it sent is counted per key (``sent``), so a test can see that a client stopped
reading. Objects are keyed without the bucket (``prefix/index/...``); any bucket name works.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import escape

__all__ = ["HostileS3", "hostile_s3"]

TRICKLE_INTERVAL = 0.1  # seconds between bytes: far below any per-recv read timeout


class HostileS3:
    """Start with :func:`hostile_s3` (a context manager); set ``objects``, ``modes``, ``default``."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.default = "honest"
        self.extra = 32 << 20
        self.sent: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []  # (method, key)
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        outer = self

        class Handler(_Handler):
            server_state = outer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="hostile-s3", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def mode(self, key: str) -> str:
        return self.modes.get(key, self.default)

    def count(self, key: str, n: int) -> None:
        with self.lock:
            self.sent[key] = self.sent.get(key, 0) + n


class hostile_s3:  # noqa: N801 — used as `with hostile_s3() as server:`
    def __enter__(self) -> HostileS3:
        self.server = HostileS3()
        self.server.thread.start()
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.server.stopping.set()  # ends every trickle
        self.server.httpd.shutdown()
        self.server.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    server_state: HostileS3
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 — quiet
        pass

    # ------------------------------------------------------------------ dispatch

    def _target(self) -> tuple[str, dict[str, list[str]]]:
        url = urlparse(self.path)
        _bucket, _, key = unquote(url.path).lstrip("/").partition("/")
        return key, parse_qs(url.query)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        s = self.server_state
        key, query = self._target()
        with s.lock:
            s.requests.append((self.command, key))
        mode = s.mode(key)
        try:
            if mode == "trickle-headers":
                return self._trickle_headers(key)
            if not key and "list-type" in query:
                return self._list(query.get("prefix", [""])[-1])
            data = s.objects.get(key)
            if data is None:
                return self._error(404, "NoSuchKey", head)
            if head:
                return self._headers(200, {"Content-Length": str(len(data)), "ETag": '"x"'})
            if mode == "no-range":
                self._headers(200, {"Content-Length": str(len(data))})
                return self._body(key, data)
            if mode == "wrong-range":
                first, _, last = self.headers.get("Range", "bytes=0-").removeprefix("bytes=").partition("-")
                n = min(int(last) if last else len(data) - 1, len(data) - 1) - int(first) + 1
                self._headers(206, {"Content-Length": str(n), "Content-Range": f"bytes 0-{n - 1}/{len(data)}"})
                return self._body(key, data[:n])
            if mode in ("long", "endless", "short", "trickle-body"):
                return self._misbehave(key, mode, data)
            self._ranged(key, data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up: what a well-behaved client does with a hostile answer

    # ------------------------------------------------------------------ answers

    def _headers(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
        self.end_headers()

    def _body(self, key: str, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        self.server_state.count(key, len(data))

    def _error(self, status: int, code: str, head: bool) -> None:
        body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()
        self._headers(status, {"Content-Type": "application/xml", "Content-Length": "0" if head else str(len(body))})
        if not head:
            self.wfile.write(body)

    def _ranged(self, key: str, data: bytes) -> None:
        rng = self.headers.get("Range", "")
        if not rng.startswith("bytes="):
            self._headers(200, {"Content-Length": str(len(data))})
            return self._body(key, data)
        first, _, last = rng[len("bytes="):].partition("-")
        start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        if start >= len(data):
            return self._error(416, "InvalidRange", head=False)
        part = data[start:end + 1]
        self._headers(206, {"Content-Length": str(len(part)), "Content-Range": f"bytes {start}-{end}/{len(data)}"})
        self._body(key, part)

    def _misbehave(self, key: str, mode: str, data: bytes) -> None:
        s = self.server_state
        if mode == "trickle-body":
            self._headers(200, {"Content-Length": str(len(data))})
            return self._drip(key, iter(data))
        if mode == "short":
            data = data[: max(0, len(data) - s.extra)]
            self._headers(206, {"Content-Length": str(len(data)), "Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"})
            return self._body(key, data)
        if mode == "long":
            self._headers(200, {"Content-Length": str(len(data) + s.extra)})
            self._body(key, data)
            left = s.extra
            while left and not s.stopping.is_set():
                n = min(left, 1 << 20)
                self._body(key, bytes(n))
                left -= n
            return
        # endless: a body delimited by the connection's close, that never closes
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self._body(key, data)
        while not s.stopping.is_set():
            self._body(key, bytes(1 << 20))

    def _drip(self, key: str, data: Iterator[int]) -> None:
        s = self.server_state
        for b in data:
            if s.stopping.wait(TRICKLE_INTERVAL):
                return
            self._body(key, bytes([b]))

    def _trickle_headers(self, key: str) -> None:
        s = self.server_state
        self.wfile.write(b"HTTP/1.1 200 OK\r\nx-amz-meta-trickle: ")
        self.wfile.flush()
        while not s.stopping.wait(TRICKLE_INTERVAL):
            self._body(key, b"a")

    def _list(self, prefix: str) -> None:
        s = self.server_state
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        keys = sorted(k for k in s.objects if k.startswith(prefix))
        items = "".join(
            f"<Contents><Key>{escape(k)}</Key><LastModified>{now}</LastModified><ETag>\"x\"</ETag>"
            f"<Size>{len(s.objects[k])}</Size><StorageClass>STANDARD</StorageClass></Contents>"
            for k in keys
        )
        body = (
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
            "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
            f"<Name>b</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{len(keys)}</KeyCount>"
            f"<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{items}</ListBucketResult>"
        ).encode()
        self._headers(200, {"Content-Type": "application/xml", "Content-Length": str(len(body))})
        self.wfile.write(body)

