"""A local HTTP endpoint in a thread that keeps every JSON body POSTed to it (webhooks, alerts)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """Answers with the scripted `statuses`, then 200; `url` is a ready-made webhook address."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.received: list[tuple[str, str, Any]] = []  # (path, content-type, JSON body)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received.append(
                    (self.path, self.headers.get("content-type", ""), json.loads(body))
                )
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base}/action-router-webhook"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def payloads(self) -> list[Any]:
        """Every body received, oldest first."""
        return [body for _, _, body in self.received]

    def bodies(self, path: str) -> list[Any]:
        """The bodies POSTed to one path."""
        return [body for got, _, body in self.received if got == path]

    def stop(self) -> None:
        """Shut the server down."""
        self.server.shutdown()
        self.server.server_close()

    close = stop
