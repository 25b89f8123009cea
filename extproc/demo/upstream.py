"""The demo LLM upstream: start it in a thread for tests, or run it as a process for `extproc up`.

python -m extproc.demo.upstream --host 127.0.0.1 --port 18080 [--chunk-delay-ms 50]
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType, TracebackType

from extproc.demo.handler import DemoServer
from extproc.demo.recording import RecordedRequest


class DemoUpstream:
    """A running demo upstream: its address, what it received, and how to stop it."""

    def __init__(self, server: DemoServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def host(self) -> str:
        """The address it listens on, as clients should dial it."""
        host = str(self._server.server_address[0])
        # A wildcard bind is reachable on loopback; that is what local clients dial.
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:18080`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests received so far (health probes excluded), oldest first."""
        return self._server.recorder.snapshot()

    def clear(self) -> None:
        """Forget the recorded requests."""
        self._server.recorder.clear()

    def stop(self) -> None:
        """Stop serving, close open connections and wait for the server thread."""
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> DemoUpstream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_demo_upstream(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    chunk_delay_ms: float = 0.0,
    log_requests: bool = False,
) -> DemoUpstream:
    """Start the demo upstream in a daemon thread; port 0 picks a free port."""
    server = DemoServer(host, port, chunk_delay_s=chunk_delay_ms / 1000, log_requests=log_requests)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="demo-upstream",
        daemon=True,
    )
    thread.start()
    return DemoUpstream(server, thread)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM (how `extproc up` stops children) into the same clean exit as Ctrl-C.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the demo upstream in the foreground until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m extproc.demo.upstream",
        description="Mock OpenAI/Anthropic LLM upstream. A last user message 'echo: X' replies X.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=18080, help="port (18080)")
    parser.add_argument(
        "--chunk-delay-ms", type=float, default=0.0, help="pause between stream chunks (0)"
    )
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)
    if args.chunk_delay_ms < 0:
        parser.error("--chunk-delay-ms must be >= 0")
    try:
        server = DemoServer(
            args.host,
            args.port,
            chunk_delay_s=args.chunk_delay_ms / 1000,
            log_requests=not args.quiet,
        )
    except OSError as exc:
        print(f"demo upstream: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"demo upstream listening on {args.host}:{server.server_address[1]}", file=sys.stderr)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.close_connections()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
