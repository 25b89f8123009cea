"""The key and tenant routers on a metadata store, auth on with bootstrap key ADMIN_KEY."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from extproc.admin import keys, tenants
from extproc.admin.context import AdminContext
from extproc.admin.errors import install_error_handlers
from extproc.config import load_config
from extproc.storage.metadata import MetadataStore
from extproc.telemetry.metrics import Metrics

ADMIN_KEY = "x" * 32
ROOT = {"Authorization": f"Bearer {ADMIN_KEY}"}


def make_client(metadata: MetadataStore) -> TestClient:
    """A test client for the key and tenant routes over `metadata`."""
    cfg = load_config(environ={}, overrides=[("auth.enabled", True), ("auth.admin_key", ADMIN_KEY)])
    ctx = AdminContext(config=lambda: cfg, metrics=Metrics(), health=lambda: {}, metadata=metadata)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(keys.build_router(ctx))
    app.include_router(tenants.build_router(ctx))
    return TestClient(app)
