"""The admin HTTP application (FastAPI), served on the gRPC server's event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from extproc import __version__
from extproc.telemetry.metrics import Metrics

HealthFn = Callable[[], dict[str, Any]]


def create_admin_app(health: HealthFn, metrics: Metrics) -> FastAPI:
    """Build the admin API: `/health` (503 when down, 200 when ok or degraded) and `/metrics`."""
    app = FastAPI(
        title="extproc admin API", version=__version__, openapi_url="/api-doc/openapi.json"
    )

    @app.get("/health")
    async def get_health() -> JSONResponse:
        report = health()
        status = 503 if report["status"] == "down" else 200
        return JSONResponse(report, status_code=status)

    @app.get("/metrics")
    async def get_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
