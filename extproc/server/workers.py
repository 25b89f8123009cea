"""`serve` with `server.workers > 1`: one gRPC server process per port, one admin API.

Envoy balances streams across endpoints, not across processes sharing a port (it keeps one
HTTP/2 connection per worker thread), so each worker listens on its own port and the
rendered Envoy cluster lists them all. Metrics are merged with prometheus-client's
multiprocess mode; worker 0 serves the admin API.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from extproc.config import Config, dump_config
from extproc.envoy_config import grpc_ports
from extproc.supervise import Part, child_env, http_ok, run_parts, tcp_ok

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def plan_workers(config: Config, workdir: Path) -> list[Part]:
    """One `serve --worker-index i` process per gRPC port."""
    config_file = workdir / "extproc.yaml"
    config_file.write_text(dump_config(config), encoding="utf-8")
    metrics_dir = workdir / "metrics"
    metrics_dir.mkdir()
    env = child_env({MULTIPROC_ENV: str(metrics_dir)})
    server = config.server
    parts = []
    for index, port in enumerate(grpc_ports(config)):
        ready = (
            http_ok(f"http://{server.admin_host}:{server.admin_port}/health")
            if index == 0
            else tcp_ok(server.grpc_host, port)
        )
        argv = [
            sys.executable,
            "-m",
            "extproc.cli",
            "serve",
            "--config",
            str(config_file),
            "--worker-index",
            str(index),
        ]
        parts.append(Part(f"worker {index} (port {port})", argv, ready, env=env))
    return parts


async def serve_workers(config: Config) -> int:
    """Supervise `server.workers` worker processes until a signal or a worker dies."""
    ports = grpc_ports(config)
    server = config.server
    message = (
        f"extproc ready: {len(ports)} workers on grpc {server.grpc_host}:{ports[0]}-{ports[-1]}, "
        f"admin http://{server.admin_host}:{server.admin_port}"
    )
    with tempfile.TemporaryDirectory(prefix="extproc-workers-") as tmp:
        return await run_parts(
            plan_workers(config, Path(tmp)),
            label="extproc serve",
            ready_message=message,
            stop_timeout=server.grace_seconds + 5,
        )
