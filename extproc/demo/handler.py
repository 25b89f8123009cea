"""HTTP/1.1 plumbing for the demo upstream: body framing, keep-alive, chunked SSE."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any, cast

import orjson

from extproc.demo.recording import RecordedRequest, Recorder
from extproc.demo.reply import Reply
from extproc.demo.routes import is_recorded, respond

MAX_BODY_BYTES = 32 * 1024 * 1024  # Anthropic's own request limit; plenty for a mock
IDLE_TIMEOUT_S = 300.0  # keep-alive connections idle longer than this are closed


class BodyError(Exception):
    """The request body framing is broken; the connection cannot be reused."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class DemoServer(ThreadingHTTPServer):
    """A threaded HTTP server that remembers its live connections so stop() can cut them."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, host: str, port: int, *, chunk_delay_s: float = 0.0, log_requests: bool = False
    ) -> None:
        self.recorder = Recorder()
        self.chunk_delay_s = chunk_delay_s
        self.log_requests = log_requests
        self._live: set[socket.socket] = set()
        self._live_lock = threading.Lock()
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), DemoHandler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup of the host, which can stall offline."""
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def track(self, conn: socket.socket, live: bool) -> None:
        """Add or remove a client connection from the live set."""
        with self._live_lock:
            if live:
                self._live.add(conn)
            else:
                self._live.discard(conn)

    def close_connections(self) -> None:
        """Shut down every open client connection, so keep-alive threads end too."""
        with self._live_lock:
            live = list(self._live)
        for conn in live:
            # OSError: the peer closed it already.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class DemoHandler(BaseHTTPRequestHandler):
    """Reads one request, records it, and writes the routed reply."""

    protocol_version = "HTTP/1.1"
    server_version = "extproc-demo-upstream/1"
    timeout = IDLE_TIMEOUT_S

    @property
    def demo(self) -> DemoServer:
        """The server with its recorder and settings."""
        return cast(DemoServer, self.server)

    def setup(self) -> None:
        """Register the connection so stop() can close it."""
        super().setup()
        self.demo.track(self.connection, True)

    def finish(self) -> None:
        """Unregister the connection."""
        try:
            super().finish()
        finally:
            self.demo.track(self.connection, False)

    def do_GET(self) -> None:
        """Handle GET."""
        self._handle()

    def do_HEAD(self) -> None:
        """Handle HEAD (health probes)."""
        self._handle()

    def do_POST(self) -> None:
        """Handle POST."""
        self._handle()

    def do_DELETE(self) -> None:
        """Handle DELETE."""
        self._handle()

    def do_PUT(self) -> None:
        """Handle PUT (always refused by routing)."""
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Log to stderr only when asked: tests run the server in-process and stay quiet."""
        # Readiness probes poll /healthz many times a second; they would bury real requests.
        if self.demo.log_requests and is_recorded(getattr(self, "path", "")):
            sys.stderr.write(f"demo-upstream {self.address_string()} {format % args}\n")

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except BodyError as exc:
            self.close_connection = True
            self._send_json(exc.status, orjson.dumps({"error": {"message": str(exc)}}), {})
            return
        if is_recorded(self.path):
            headers: dict[str, str] = {}
            for name, value in self.headers.items():
                key = name.lower()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            self.demo.recorder.add(RecordedRequest(self.command, self.path, headers, body))
        reply = respond(self.command, self.path, body, self.demo.recorder)
        try:
            self._send(reply)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-reply

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
        except ValueError:
            raise BodyError(400, f"invalid Content-Length {raw!r}") from None
        if length < 0:
            raise BodyError(400, f"invalid Content-Length {raw!r}")
        if length > MAX_BODY_BYTES:
            raise BodyError(413, f"request body over {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        # Envoy forwards a client's chunked body as is when it does not rewrite it.
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(line, 16)
            except ValueError:
                raise BodyError(400, "malformed chunked request body") from None
            if size == 0:
                break
            total += size
            if total > MAX_BODY_BYTES:
                raise BodyError(413, f"request body over {MAX_BODY_BYTES} bytes")
            parts.append(self.rfile.read(size))
            self.rfile.readline(16)  # the CRLF after each chunk
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass  # trailers are ignored
        return b"".join(parts)

    def _send(self, reply: Reply) -> None:
        if reply.events is None:
            raw = reply.body if isinstance(reply.body, bytes) else orjson.dumps(reply.body)
            self._send_json(reply.status, raw, reply.headers)
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        for index, frame in enumerate(reply.events):
            if index and self.demo.chunk_delay_s:
                time.sleep(self.demo.chunk_delay_s)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _send_json(self, status: int, raw: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)
        self.wfile.flush()
