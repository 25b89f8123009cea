"""Every admin route but health (and public metrics) refuses missing, wrong and weak keys."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from extproc.admin.app import create_admin_app
from extproc.admin.auth import KEY_KIND, hash_key, key_id_of
from extproc.admin.context import AdminContext
from extproc.config import Config, load_config
from extproc.storage.metadata import MemoryMetadataStore
from extproc.storage.stores import MemoryTraceStore
from extproc.telemetry.metrics import Metrics

ADMIN = "b" * 40
# The least role each operation needs: the specification this test holds the app to.
MIN_ROLE = {
    ("GET", "/api/v1/traces"): "viewer",
    ("GET", "/api/v1/traces/{trace_id}"): "viewer",
    ("GET", "/api/v1/spans"): "viewer",
    ("GET", "/api/v1/spans/{span_id}"): "viewer",
    ("GET", "/api/v1/stats"): "viewer",
    ("GET", "/api/v1/stats/global"): "viewer",
    ("GET", "/api/v1/security/findings"): "viewer",
    ("GET", "/api/v1/costs/current"): "viewer",
    ("GET", "/api/v1/actions/summary"): "viewer",
    ("GET", "/api/v1/tenants"): "viewer",
    ("POST", "/api/v1/tenants"): "admin",
    ("GET", "/api/v1/tenants/{tenant_id}"): "viewer",
    ("PUT", "/api/v1/tenants/{tenant_id}"): "admin",
    ("DELETE", "/api/v1/tenants/{tenant_id}"): "admin",
    ("GET", "/api/v1/auth/keys"): "admin",
    ("POST", "/api/v1/auth/keys"): "admin",
    ("DELETE", "/api/v1/auth/keys/{key_id}"): "admin",
    ("GET", "/api/v1/config/live"): "operator",
    ("GET", "/api/v1/config/features"): "viewer",
    ("PUT", "/api/v1/config/features"): "operator",
    ("PUT", "/api/v1/config/features/{feature}"): "operator",
    ("POST", "/api/v1/reports/generate"): "admin",
    ("GET", "/api/v1/reports"): "viewer",
    ("GET", "/api/v1/reports/{report_id}"): "viewer",
}
PUBLIC = {("GET", "/health"), ("GET", "/health/live"), ("GET", "/metrics")}


def _app(**auth: object) -> tuple[FastAPI, dict[str, str]]:
    settings = [("auth.enabled", True), ("auth.admin_key", ADMIN)]
    settings += [(f"auth.{k}", v) for k, v in auth.items()]
    holder = {"config": load_config(environ={}, overrides=settings)}
    metadata = MemoryMetadataStore()
    keys = {}
    for role in ("viewer", "operator"):
        key = f"llmt_{role}_" + "k" * 30
        digest = hash_key(key)
        metadata.put(
            KEY_KIND,
            key_id_of(digest),
            {"id": key_id_of(digest), "name": role, "role": role, "key_hash": digest},
        )
        keys[role] = key

    def apply(config: Config) -> None:
        holder["config"] = config

    ctx = AdminContext(
        config=lambda: holder["config"],
        metrics=Metrics(),
        health=lambda: {"status": "ok"},
        metadata=metadata,
        store=MemoryTraceStore(),
        apply_config=apply,
    )
    return create_admin_app(ctx), keys


def _operations(app: FastAPI) -> list[tuple[str, str]]:
    spec = app.openapi()
    return sorted((method.upper(), path) for path, item in spec["paths"].items() for method in item)


def _url(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def test_the_table_covers_every_operation() -> None:
    app, _ = _app()
    assert set(_operations(app)) == set(MIN_ROLE) | PUBLIC


@pytest.mark.parametrize("operation", sorted(MIN_ROLE))
def test_missing_wrong_and_weak_keys_are_refused(operation: tuple[str, str]) -> None:
    app, keys = _app()
    method, path = operation
    client = TestClient(app)
    for headers in ({}, {"authorization": "Bearer wrong-key"}, {"authorization": ADMIN}):
        resp = client.request(method, _url(path), headers=headers, json={})
        assert resp.status_code == 401, (operation, headers, resp.text)
        assert resp.json()["error"]["code"] == "unauthorized"
        assert resp.headers["www-authenticate"] == "Bearer"
    needed = MIN_ROLE[operation]
    for role in ("viewer", "operator"):
        resp = client.request(
            method, _url(path), headers={"authorization": f"Bearer {keys[role]}"}, json={}
        )
        if ("viewer", "operator", "admin").index(role) < ("viewer", "operator", "admin").index(
            needed
        ):
            assert resp.status_code == 403, (operation, role, resp.text)
            assert resp.json()["error"]["code"] == "forbidden"
        else:
            assert resp.status_code not in (401, 403), (operation, role, resp.text)


def test_health_is_open_and_metrics_follow_the_setting() -> None:
    app, _ = _app()
    client = TestClient(app)
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200
    private, _ = _app(metrics_public=False)
    client = TestClient(private)
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 401
    ok = client.get("/metrics", headers={"authorization": f"Bearer {ADMIN}"})
    assert ok.status_code == 200
