"""The reload watcher: a saved file is applied once; a bad one is rejected once and kept out."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from extproc.config import Config, load_config
from extproc.detect.scanner import Scanner
from extproc.server.reload import Reloader, watched_files
from extproc.telemetry.metrics import Metrics


class FakeHandle:
    """Records what the reloader applies."""

    def __init__(self, config: Config) -> None:
        self.engine = SimpleNamespace(config=config, metrics=Metrics())
        self.applied: list[Config] = []

    def reload(self, config: Config, scanner: Scanner | None = None) -> None:
        self.applied.append(config)
        self.engine.config = config


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    # Distinct mtimes even on coarse-grained filesystems.
    stamp = time.time() + len(text)
    os.utime(path, (stamp, stamp))


async def _until(check: Any) -> None:
    async with asyncio.timeout(10):
        while not check():  # noqa: ASYNC110 - the watcher has no event to wait on
            await asyncio.sleep(0.01)


def _count(handle: FakeHandle, result: str) -> float:
    value = handle.engine.metrics.registry.get_sample_value(
        "extproc_config_reloads_total", {"result": result}
    )
    return value or 0.0


async def test_saved_files_are_applied_and_bad_ones_rejected_once(tmp_path: Path) -> None:
    path = tmp_path / "extproc.yaml"
    _write(path, "enforcement: {mode: block}\n")
    handle = FakeHandle(load_config(path, environ={}))
    reloader = Reloader(
        handle,  # type: ignore[arg-type]
        lambda: load_config(path, environ={}),
        path,
        interval=0.01,
    )
    task = asyncio.create_task(reloader.watch())
    try:
        _write(path, "enforcement: {mode: flag}\n")
        await _until(lambda: handle.applied)
        assert handle.applied[-1].enforcement.mode == "flag"
        _write(path, "enforcement: {mode: sometimes}\n")
        await _until(lambda: _count(handle, "rejected") == 1)
        # A few more ticks: the same bad file is not retried.
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert _count(handle, "rejected") == 1
        assert handle.engine.config.enforcement.mode == "flag"
        _write(path, "enforcement: {mode: log}\n")
        await _until(lambda: handle.engine.config.enforcement.mode == "log")
        assert _count(handle, "applied") == 2
    finally:
        task.cancel()


def test_rule_and_pricing_files_are_watched(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    prices = tmp_path / "prices.yaml"
    config = load_config(
        environ={},
        overrides=[
            ("security_analysis.rule_files", [str(rules)]),
            ("cost_estimation.pricing_file", str(prices)),
        ],
    )
    files = watched_files(config, tmp_path / "extproc.yaml")
    assert files == [tmp_path / "extproc.yaml", rules, prices]
