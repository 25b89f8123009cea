"""Wire the ext_proc gRPC server and the admin HTTP server into one process, and run it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from envoy.service.auth.v3 import external_auth_pb2_grpc as authz_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc import __version__
from extproc.admin.app import create_admin_app
from extproc.admin.context import AdminContext
from extproc.config import Config
from extproc.detect.ensemble import Ensemble
from extproc.detect.scanner import Scanner
from extproc.policy.admission import Gate
from extproc.policy.inspect import Inspector
from extproc.policy.limits import BudgetEvent
from extproc.server.authz import Authorizer
from extproc.server.authz_policy import AuthzDecider
from extproc.server.processor import Engine, ExternalProcessor
from extproc.server.reload import Reloader
from extproc.storage.factory import Storage, open_metadata, open_storage, open_store
from extproc.storage.metadata import MetadataStore
from extproc.storage.stores import TraceStore
from extproc.telemetry.alerts import AlertManager, budget_alert
from extproc.telemetry.anomaly import AnomalyDetector
from extproc.telemetry.metrics import Metrics

log = logging.getLogger("extproc.server")
# Protobuf framing around a body; the body limit itself comes from config.
_GRPC_OVERHEAD = 64 * 1024


def build_engine(config: Config, metrics: Metrics | None = None) -> Engine:
    """Load rules and build the shared per-process engine; raises on a bad rule pack."""
    scanner = Scanner.load(config.security_analysis.rule_files or None)
    metrics = metrics or Metrics()
    metrics.rules_loaded.set(scanner.rule_count)
    ensemble = Ensemble(config.security_analysis, metrics)
    if config.enable_security_analysis:
        ensemble.load()
    engine = Engine(config, Inspector(config, scanner, ensemble), metrics)
    engine.ensemble = ensemble
    engine.gate = Gate.build(config, metrics)
    engine.alerts = AlertManager(config.alerts, metrics)
    engine.anomaly = AnomalyDetector(config.anomaly_detection, metrics)
    return engine


# Settings read once at start; a reload that changes them is applied only after a restart.
_RESTART_ONLY = ("server", "envoy", "storage", "shutdown", "logging", "authz")
_RESTART_ONLY_ANALYSIS = ("ml_", "jailbreak_", "ner_", "toxicity_", "operating_point")
# Model switches apply at once (to models loaded at startup): runtime feature flags.
_RUNTIME_SWITCHES = ("ml_enabled", "jailbreak_enabled", "ner_enabled", "toxicity_enabled")


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The sections of a reloaded config that need a restart to take effect."""
    changed = [name for name in _RESTART_ONLY if getattr(old, name) != getattr(new, name)]
    old_sa, new_sa = old.security_analysis, new.security_analysis
    for name in type(old_sa).model_fields:
        if name in _RUNTIME_SWITCHES:
            continue
        if name.startswith(_RESTART_ONLY_ANALYSIS) and getattr(old_sa, name) != getattr(
            new_sa, name
        ):
            changed.append(f"security_analysis.{name}")
    return changed


def grpc_options(config: Config) -> list[tuple[str, Any]]:
    """gRPC channel options sized for the largest body Envoy may send us."""
    limit = max(config.server.max_request_size_bytes, config.server.max_response_size_bytes)
    size = limit + _GRPC_OVERHEAD
    return [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.so_reuseport", 0),
    ]


class _AdminServer(uvicorn.Server):
    """uvicorn without its own signal handlers: those belong to the process (`serve`, `up`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class ServerHandle:
    """A running extproc process's servers, for tests and `serve`."""

    engine: Engine
    grpc_server: grpc.aio.Server
    grpc_port: int
    processor: ExternalProcessor
    admin: uvicorn.Server | None = None
    admin_task: asyncio.Task[None] | None = None
    storage: Storage | None = None
    started: float = field(default_factory=time.time)
    metadata: MetadataStore | None = None  # keys, tenants, reports, audit and alert events
    api_store: TraceStore | None = None  # the admin API's own reader of the trace store
    reloads: int = 0

    def health(self) -> dict[str, Any]:
        """Health report: ok when every component is up."""
        rules = self.engine.inspector.scanner.rule_count
        components: dict[str, dict[str, Any]] = {
            "grpc": {"status": "ok", "port": self.grpc_port},
            "regex_rules": {"status": "ok" if rules > 0 else "down", "count": rules},
        }
        ensemble = self.engine.ensemble
        if ensemble is not None and ensemble.slots:
            ml = ensemble.status()
            # Missing models leave regex analysis running: degraded (HTTP 200), never down.
            components["ml"] = {"status": "ok" if not ml["degraded"] else "degraded", **ml}
        if self.engine.gate is not None:
            components["redis"] = self.engine.gate.redis_status()
        if self.engine.writer is not None:
            components["storage"] = {
                "status": "ok",
                "profile": self.engine.config.storage.profile,
                "queued": self.engine.writer.depth,
            }
        if self.engine.alerts is not None and self.engine.alerts.config.enabled:
            # Failed deliveries are counted there; they never make the server unready.
            components["alerts"] = {"status": "ok", **self.engine.alerts.status()}
        breakers = {"analysis": self.engine.breaker.status()}
        if self.engine.writer is not None:
            breakers["storage"] = self.engine.writer.breaker.status()
        # A tripped breaker passes requests unscanned (or refuses them, fail-closed) and
        # journals traces: the process still serves, so degraded (HTTP 200), never down.
        tripped = any(b["state"] != "closed" for b in breakers.values())
        components["circuit_breakers"] = {"status": "degraded" if tripped else "ok", **breakers}
        states = {c["status"] for c in components.values()}
        status = "down" if "down" in states else ("degraded" if "degraded" in states else "ok")
        return {
            "status": status,
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started, 1),
            "components": components,
        }

    def reload(self, config: Config, scanner: Scanner | None = None) -> None:
        """Swap in a new policy (rules, enforcement, limits, prices, actions) for new streams.

        Raises (keeping the running policy) when the new rule packs or pricing file are bad.
        Open streams finish under the engine they started with.
        """
        old = self.engine
        if scanner is None:
            scanner = Scanner.load(config.security_analysis.rule_files or None)
        if old.gate is not None:
            old.gate.reconfigure(config)
        if old.alerts is not None:
            old.alerts.reconfigure(config.alerts)
        if old.anomaly is not None:
            old.anomaly.reconfigure(config.anomaly_detection)
        ensemble = old.ensemble.view(config.security_analysis) if old.ensemble else None
        engine = old.derive(config, Inspector(config, scanner, ensemble))
        self.engine.metrics.rules_loaded.set(scanner.rule_count)
        self.engine = engine
        self.processor.engine = engine
        self.reloads += 1
        pending = restart_only_changes(old.config, config)
        if pending:
            log.warning(
                "reloaded; these settings change only after a restart: %s", ", ".join(pending)
            )
        else:
            log.info("reloaded: %d rules", scanner.rule_count)

    def _alert_event(self, event: BudgetEvent) -> None:
        """Send a budget crossing to the alert channels and keep it as an alert event."""
        if self.engine.alerts is not None:
            self.engine.alerts.submit(budget_alert(event, trace_id=None, timestamp=time.time()))
        if self.metadata is None:
            return
        created = time.time()
        document: dict[str, Any] = {
            "type": f"budget_{event.kind}_limit",
            "scope": event.scope,
            "tenant_id": event.tenant_id,
            "agent_id": event.agent_id,
            "window": event.window,
            "spent_usd": round(event.spent_usd, 6),
            "limit_usd": event.limit_usd,
            "created_at": created,
        }
        event_id = f"{int(created * 1000)}-{random.getrandbits(32):08x}"
        metadata = self.metadata
        self.engine.track(
            asyncio.to_thread(metadata.put, "alert_event", event_id, document, event.tenant_id)
        )

    async def stop(self, grace: float) -> None:
        """Stop accepting streams, let open ones finish within `grace`, stop admin."""
        await self.grpc_server.stop(grace)
        # Late model results finish their records before storage closes.
        await self.engine.drain(self.engine.timeout)
        if self.engine.gate is not None:
            await self.engine.gate.close()
        if self.engine.alerts is not None:
            await self.engine.alerts.close()
        if self.engine.ensemble is not None:
            self.engine.ensemble.close()
        for owned in (self.metadata, self.api_store):
            close = getattr(owned, "close", None)
            if close is not None:
                close()
        if self.storage is not None:
            # After the last stream, so every finished request is queued before the drain.
            timeout = self.engine.config.shutdown.timeout_seconds
            await asyncio.to_thread(self.storage.close, timeout)
        if self.admin is not None:
            self.admin.should_exit = True
        if self.admin_task is not None:
            await self.admin_task


async def _admin_context(
    handle: ServerHandle, *, resolve: Callable[[], Config] | None, runtime_overlay: Path | None
) -> AdminContext:
    engine = handle.engine
    config = engine.config
    store: TraceStore | None = None
    if config.enable_trace_storage and handle.storage is not None:
        # The memory store exists once; file and database stores get a reader of their own.
        if config.storage.profile == "memory":
            store = handle.storage.store
        else:
            store = await asyncio.to_thread(open_store, config)
            handle.api_store = store
    loop = asyncio.get_running_loop()

    def apply_config(new: Config) -> None:
        # Called from the admin API's worker threads; the swap happens on the event loop.
        scanner = Scanner.load(new.security_analysis.rule_files or None)

        async def swap() -> None:
            handle.reload(new, scanner)

        asyncio.run_coroutine_threadsafe(swap(), loop).result(30)

    assert handle.metadata is not None
    return AdminContext(
        config=lambda: handle.engine.config,
        metrics=engine.metrics,
        health=handle.health,
        metadata=handle.metadata,
        store=store,
        apply_config=apply_config,
        resolve=resolve,
        runtime_overlay=runtime_overlay,
    )


async def start_servers(
    config: Config,
    *,
    grpc_port: int | None = None,
    admin: bool = True,
    engine: Engine | None = None,
    resolve: Callable[[], Config] | None = None,
    runtime_overlay: Path | None = None,
) -> ServerHandle:
    """Start the gRPC server (and admin HTTP) on the running loop; return a handle.

    `resolve` re-reads the configuration's sources and `runtime_overlay` is where feature
    flags set through the admin API persist (None: in memory only).
    """
    engine = engine or build_engine(config)
    server = grpc.aio.server(options=grpc_options(config))
    processor = ExternalProcessor(engine)
    pb_grpc.add_ExternalProcessorServicer_to_server(processor, server)
    port = config.server.grpc_port if grpc_port is None else grpc_port
    bound = server.add_insecure_port(f"{config.server.grpc_host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {config.server.grpc_host}:{port} for gRPC")
    storage = None
    if engine.config.enable_trace_storage:
        storage = open_storage(engine.config, engine.metrics, instance=f"port-{bound}")
        engine.writer = storage.writer
    handle = ServerHandle(engine, server, bound, processor, storage=storage)
    if config.authz.enabled:
        authorizer = Authorizer(
            AuthzDecider(lambda: handle.engine),
            engine.metrics,
            failure_mode=config.server.failure_mode,
        )
        authz_grpc.add_AuthorizationServicer_to_server(authorizer, server)
    # Keys, tenants, reports and alert events live here even when traces are not stored.
    handle.metadata = await asyncio.to_thread(open_metadata, engine.config)
    if engine.gate is not None:
        await engine.gate.start()
        engine.gate.budget_listeners.append(handle._alert_event)
    if engine.alerts is not None:
        await engine.alerts.start()
    await server.start()
    if admin:
        app = create_admin_app(
            await _admin_context(handle, resolve=resolve, runtime_overlay=runtime_overlay)
        )
        uv_config = uvicorn.Config(
            app,
            host=config.server.admin_host,
            port=config.server.admin_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        handle.admin = _AdminServer(uv_config)
        handle.admin_task = asyncio.create_task(handle.admin.serve())
        deadline = time.monotonic() + 10
        while not handle.admin.started:
            if handle.admin_task.done():
                await handle.admin_task
                raise OSError(
                    f"cannot listen on {config.server.admin_host}:{config.server.admin_port} "
                    "for the admin API"
                )
            if time.monotonic() > deadline:
                raise OSError("admin API did not start within 10 s")
            await asyncio.sleep(0.01)
    log.info(
        "extproc %s serving ext_proc on %s:%d%s, %d rules",
        __version__,
        config.server.grpc_host,
        bound,
        f", admin on {config.server.admin_host}:{config.server.admin_port}" if admin else "",
        engine.inspector.scanner.rule_count,
    )
    return handle


async def serve(
    config: Config,
    *,
    worker_index: int = 0,
    resolve: Callable[[], Config] | None = None,
    config_path: Path | None = None,
    runtime_overlay: Path | None = None,
) -> None:
    """Run until SIGINT/SIGTERM, then drain open streams for `server.grace_seconds`.

    Worker `i` of a multi-worker server listens on grpc_port+i; only worker 0 serves admin.
    With `resolve`, SIGHUP and changes to the config, rule or pricing files reload the policy.
    """
    handle = await start_servers(
        config,
        grpc_port=config.server.grpc_port + worker_index,
        admin=worker_index == 0,
        resolve=resolve,
        runtime_overlay=runtime_overlay,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watcher: asyncio.Task[None] | None = None
    if resolve is not None:
        reloader = Reloader(handle, resolve, config_path)
        loop.add_signal_handler(signal.SIGHUP, lambda: handle.engine.track(reloader.on_signal()))
        watcher = asyncio.create_task(reloader.watch())
    admin = (
        f" admin http://{config.server.admin_host}:{config.server.admin_port}"
        if worker_index == 0
        else ""
    )
    print(
        f"extproc ready: ext_proc grpc://{config.server.grpc_host}:{handle.grpc_port}{admin}",
        flush=True,
    )
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    log.info("shutting down; draining for up to %.1fs", config.server.grace_seconds)
    await handle.stop(config.server.grace_seconds)
