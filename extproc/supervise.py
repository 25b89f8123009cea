"""Supervise child processes: start, wait until ready, stop all when one dies or on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from extproc.config import ENV_PREFIX

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class SupervisorError(RuntimeError):
    """A child could not start, never became ready, or died."""


@dataclass
class Part:
    """One supervised child process and how to tell it is ready."""

    name: str
    argv: list[str]
    ready: Callable[[], bool]
    env: dict[str, str] | None = None
    process: asyncio.subprocess.Process | None = None


def http_ok(url: str, expect: bytes | None = None) -> Callable[[], bool]:
    """A readiness check: GET `url` answers 200 (containing `expect`)."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                body: bytes = resp.read()
                return resp.status == 200 and (expect is None or expect in body)
        except OSError:
            return False

    return check


def tcp_ok(host: str, port: int) -> Callable[[], bool]:
    """A readiness check: something accepts TCP connections on host:port."""

    def check() -> bool:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            return False

    return check


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The parent's environment minus EXTPROC_* (children get a complete config file)."""
    # Inherited EXTPROC_* variables would override the command-line flags the parent
    # already folded into the config file it hands to the child.
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(extra or {})
    return env


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the supervisor dies, even by SIGKILL."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux); elsewhere a no-op failure
    except (OSError, AttributeError):
        pass


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _wait_ready(parts: list[Part], deadline: float) -> None:
    pending = list(parts)
    while pending:
        for part in list(pending):
            assert part.process is not None
            if part.process.returncode is not None:
                raise SupervisorError(f"{part.name} exited with code {part.process.returncode}")
            if await asyncio.to_thread(part.ready):
                pending.remove(part)
        if pending and time.monotonic() > deadline:
            names = ", ".join(p.name for p in pending)
            raise SupervisorError(f"not ready after {READY_TIMEOUT:.0f}s: {names}")
        if pending:
            await asyncio.sleep(0.1)


async def _stop(parts: list[Part], grace: float) -> None:
    running = [p for p in reversed(parts) if p.process and p.process.returncode is None]
    for part in running:
        assert part.process is not None
        with contextlib.suppress(ProcessLookupError):
            part.process.terminate()
    for part in running:
        assert part.process is not None
        try:
            await asyncio.wait_for(part.process.wait(), grace)
        except TimeoutError:
            _say(f"{part.name} did not stop within {grace:.0f}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                part.process.kill()
            await part.process.wait()


async def _until_exit(parts: list[Part], stop: asyncio.Event, label: str) -> int:
    waits = {asyncio.create_task(p.process.wait()): p for p in parts if p.process is not None}
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({stopper, *waits}, return_when=asyncio.FIRST_COMPLETED)
    for task in [stopper, *waits]:
        if task not in done:
            task.cancel()
    if stopper in done:
        _say(f"{label}: stopping")
        return 0
    for task in done:
        part = waits.get(task)
        if part is not None:
            _say(f"{label}: {part.name} exited with code {task.result()}; stopping the rest")
    return 1


async def run_parts(
    parts: list[Part], *, label: str, ready_message: str, stop_timeout: float = STOP_TIMEOUT
) -> int:
    """Start `parts` in order, print `ready_message` once all are ready, run until a signal.

    Returns 0 after SIGINT/SIGTERM, 1 when a part fails to start or dies.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for part in parts:
            # Children log to stderr; stdout carries only the supervisor's ready line.
            part.process = await asyncio.create_subprocess_exec(
                *part.argv,
                env=part.env if part.env is not None else child_env(),
                stdout=sys.stderr.fileno(),
                preexec_fn=_die_with_parent,
            )
        waiter = asyncio.create_task(_wait_ready(parts, time.monotonic() + READY_TIMEOUT))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            waiter.cancel()
            return 0
        stopper.cancel()
        waiter.result()
        print(ready_message, flush=True)
        return await _until_exit(parts, stop, label)
    except (SupervisorError, OSError) as exc:
        _say(f"{label}: {exc}")
        return 1
    finally:
        await _stop(parts, stop_timeout)
