"""What every admin route needs: the live config, stores, metrics and the reload hook."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extproc.config import Config
from extproc.storage.metadata import MetadataStore
from extproc.storage.stores import TraceStore
from extproc.telemetry.metrics import Metrics

HealthFn = Callable[[], dict[str, Any]]


@dataclass
class AdminContext:
    """Shared by the admin routers; built once by the server app.

    The stores are synchronous (SQLite/PostgreSQL): routes are plain `def` functions, which
    FastAPI runs in its thread pool, so the event loop shared with gRPC never waits on them.
    """

    config: Callable[[], Config]  # the configuration in force now (changes on reload)
    metrics: Metrics
    health: HealthFn
    metadata: MetadataStore  # tenants, api keys, audit events, reports, alert events
    store: TraceStore | None = None  # trace queries; None when trace storage is off
    # Apply a new configuration to the running server (feature flags); None in tests that
    # have no server.
    apply_config: Callable[[Config], None] | None = None
    # Re-resolve the configuration from its sources (file, overlay, env, flags).
    resolve: Callable[[], Config] | None = None
    runtime_overlay: Path | None = None  # where feature flags persist; None = memory only
