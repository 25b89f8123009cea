"""The admin HTTP application (FastAPI), served on the gRPC server's event loop."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from extproc import __version__
from extproc.admin import features, keys, queries, reports, tenants
from extproc.admin.auth import authenticate
from extproc.admin.context import AdminContext, HealthFn
from extproc.admin.errors import ApiError, error_json, install_error_handlers

__all__ = ["AdminContext", "HealthFn", "create_admin_app"]


def create_admin_app(ctx: AdminContext) -> FastAPI:
    """The admin API: health, metrics, traces, tenants, keys, flags, reports (OpenAPI docs)."""
    app = FastAPI(
        title="extproc admin API",
        version=__version__,
        openapi_url="/api-doc/openapi.json",
        docs_url="/swagger-ui",
        redoc_url=None,
    )
    install_error_handlers(app)

    @app.get("/health", tags=["health"], response_model=dict[str, Any])
    async def get_health() -> JSONResponse:
        """Readiness: 200 when ok or degraded (regex-only, breaker open), 503 when down."""
        report = ctx.health()
        status = 503 if report["status"] == "down" else 200
        return JSONResponse(report, status_code=status)

    @app.get("/health/live", tags=["health"], response_model=dict[str, str])
    async def get_live() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "alive"}

    @app.get("/metrics", tags=["health"], response_class=Response)
    def get_metrics(request: Request) -> Response:
        """Prometheus exposition (needs a key unless auth.metrics_public)."""
        if not ctx.config().auth.metrics_public:
            try:
                authenticate(ctx, request.headers.get("authorization"))
            except ApiError as exc:
                return error_json(exc.status, exc.code, exc.message, exc.headers)
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    for module in (queries, tenants, keys, features, reports):
        app.include_router(module.build_router(ctx))
    return app
