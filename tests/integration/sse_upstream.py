"""An upstream that streams fixed SSE chunks, and notices when the proxy hangs up early."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FixedSseUpstream:
    """Answers every POST with `chunks`, `delay` seconds apart, as one chunked SSE response."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.delay = 0.0
        self.sent = 0  # chunks written before the stream ended or broke
        self.aborted = threading.Event()  # the proxy closed the connection mid-stream
        self.finished = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in upstream.chunks:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                        upstream.sent += 1
                        time.sleep(upstream.delay)
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:
                    upstream.aborted.set()
                finally:
                    upstream.finished.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self, chunks: list[bytes], delay: float = 0.0) -> None:
        """Serve these chunks on the next request."""
        self.chunks, self.delay, self.sent = chunks, delay, 0
        self.aborted.clear()
        self.finished.clear()

    def stop(self) -> None:
        """Shut the server down."""
        self.server.shutdown()
        self.server.server_close()
