"""Run a real stack for tests: Envoy (subprocess) → extproc (own loop thread) → demo upstream."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from extproc.config import Config, load_config
from extproc.demo.upstream import DemoUpstream, start_demo_upstream
from extproc.envoy_config import render_yaml
from extproc.server.app import ServerHandle, start_servers
from extproc.stack import envoy_binary

DEADLINE = 30.0


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(check: Any, what: str, timeout: float = DEADLINE) -> None:
    """Poll `check()` until true or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class ExtprocThread:
    """The extproc servers on their own event loop in a background thread."""

    def __init__(
        self,
        config: Config,
        *,
        resolve: Callable[[], Config] | None = None,
        runtime_overlay: Path | None = None,
    ) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        start = start_servers(config, resolve=resolve, runtime_overlay=runtime_overlay)
        future = asyncio.run_coroutine_threadsafe(start, self.loop)
        self.handle: ServerHandle = future.result(DEADLINE)

    def stop(self) -> None:
        """Stop the servers (as if the process died) and the loop."""
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.handle.stop(0), self.loop).result(DEADLINE)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(DEADLINE)
        self.loop.close()


class EnvoyProcess:
    """A real Envoy running a rendered config."""

    def __init__(self, config: Config, mode: str = "ext_proc") -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="extproc-test-envoy-")
        path = Path(self.dir.name) / "envoy.yaml"
        path.write_text(render_yaml(config, mode=mode), encoding="utf-8")  # type: ignore[arg-type]
        self.log = open(Path(self.dir.name) / "envoy.log", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                envoy_binary(),
                "-c",
                str(path),
                "--concurrency",
                "1",
                "--log-level",
                "warn",
                "--use-dynamic-base-id",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        admin = f"http://127.0.0.1:{config.envoy.admin_port}/ready"

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"envoy exited: {self.output()}")
            return httpx.get(admin, timeout=1).text.strip() == "LIVE"

        wait_until(ready, "envoy to be ready")

    def output(self) -> str:
        """What Envoy logged."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        """Terminate Envoy and clean up."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        self.dir.cleanup()


class Stack:
    """Envoy + extproc + demo upstream with free ports; `url` is Envoy's listener."""

    def __init__(self, overrides: dict[str, Any] | None = None, mode: str = "ext_proc") -> None:
        self.upstream: DemoUpstream = start_demo_upstream()
        settings: dict[str, Any] = {
            "envoy.upstream_url": self.upstream.url,
            "envoy.listen_port": free_port(),
            "envoy.admin_port": free_port(),
            "server.grpc_port": free_port(),
            "server.admin_port": free_port(),
            "storage.profile": "memory",
            "security_analysis.ml_enabled": False,  # tests that want models turn them on
        }
        settings.update(overrides or {})
        self.config = load_config(environ={}, overrides=settings.items())
        self.extproc: ExtprocThread | None = ExtprocThread(self.config)
        self.envoy = EnvoyProcess(self.config, mode)
        self.url = f"http://127.0.0.1:{self.config.envoy.listen_port}"
        self.admin_url = f"http://127.0.0.1:{self.config.server.admin_port}"
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        """POST through Envoy (JSON body unless `content=` is given)."""
        if body is not None:
            kwargs["json"] = body
        return self.client.post(path, **kwargs)

    def metrics(self) -> str:
        """extproc's /metrics text."""
        return httpx.get(self.admin_url + "/metrics", timeout=5).text

    def kill_extproc(self) -> None:
        """Stop the extproc server, as if its process died."""
        if self.extproc is not None:
            self.extproc.stop()
            self.extproc = None

    def close(self) -> None:
        """Stop everything."""
        self.client.close()
        self.envoy.stop()
        self.kill_extproc()
        self.upstream.stop()


@contextlib.contextmanager
def running_stack(
    overrides: dict[str, Any] | None = None, mode: str = "ext_proc"
) -> Iterator[Stack]:
    """A Stack for the duration of a `with` block (`mode`: ext_proc or ext_authz filter)."""
    stack = Stack(overrides, mode)
    try:
        yield stack
    finally:
        stack.close()
