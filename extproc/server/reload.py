"""Hot reload: SIGHUP or a changed config/rule/pricing file swaps the policy in place.

A config that fails validation (or a rule pack that does not compile, or a broken pricing
file) is rejected with the reason logged, and the running policy stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from extproc.config import Config
from extproc.detect.scanner import Scanner

if TYPE_CHECKING:
    from extproc.server.app import ServerHandle

log = logging.getLogger("extproc.reload")


def watched_files(config: Config, config_path: Path | None) -> list[Path]:
    """The files whose change triggers a reload."""
    files = [config_path] if config_path is not None else []
    files += list(config.security_analysis.rule_files)
    if config.cost_estimation.pricing_file is not None:
        files.append(config.cost_estimation.pricing_file)
    return [Path(f) for f in files]


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class Reloader:
    """Re-resolves the config and applies it to a running server."""

    def __init__(
        self,
        handle: ServerHandle,
        resolve: Callable[[], Config],
        config_path: Path | None,
        *,
        interval: float = 1.0,
    ) -> None:
        self.handle = handle
        self.resolve = resolve
        self.config_path = config_path
        self.interval = interval
        self._lock = asyncio.Lock()
        self._stamps = self._snapshot(handle.engine.config)

    def _snapshot(self, config: Config) -> dict[Path, tuple[int, int] | None]:
        return {p: _stamp(p) for p in watched_files(config, self.config_path)}

    async def reload(self, reason: str) -> bool:
        """Load and apply the config now; False (old policy kept) when it is rejected."""
        metrics = self.handle.engine.metrics
        async with self._lock:
            try:
                # File reads and rule compilation stay off the event loop.
                config = await asyncio.to_thread(self.resolve)
                scanner = await asyncio.to_thread(
                    Scanner.load, config.security_analysis.rule_files or None
                )
                self.handle.reload(config, scanner)
            except Exception as exc:
                metrics.inc(metrics.reloads, "rejected")
                log.error("reload on %s rejected; keeping the running policy:\n%s", reason, exc)
                self._stamps = self._current()
                return False
            metrics.inc(metrics.reloads, "applied")
            self._stamps = self._snapshot(config)
            log.info("policy reloaded on %s", reason)
            return True

    def _current(self) -> dict[Path, tuple[int, int] | None]:
        # Remember the rejected files' stamps too, so a bad file is not retried every tick.
        return {p: _stamp(p) for p in self._stamps}

    async def on_signal(self) -> None:
        """SIGHUP: reload now (the result is logged and metered)."""
        await self.reload("SIGHUP")

    async def watch(self) -> None:
        """Poll the watched files; reload when one changes (until cancelled)."""
        while True:
            await asyncio.sleep(self.interval)
            now = await asyncio.to_thread(self._current)
            if now != self._stamps:
                self._stamps = now
                await self.reload("file change")
