"""API-key routes: create once-shown keys, list without secrets, revoke, roles, tenant scope."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from extproc.admin.audit import AUDIT_KIND
from extproc.admin.auth import KEY_KIND
from extproc.storage.metadata import MemoryMetadataStore, MetadataStore, SqliteMetadataStore
from tests.unit.admin.metadata_app import ROOT, make_client

KEYS = "/api/v1/auth/keys"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def create(
    client: TestClient, role: str, tenant_id: str | None = None, *, as_: dict[str, str] = ROOT
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": f"{role} key", "role": role}
    if tenant_id is not None:
        body["tenant_id"] = tenant_id
    r = client.post(KEYS, json=body, headers=as_)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def all_documents(store: MetadataStore) -> bytes:
    """Every stored key and audit document, serialized, to search for leaked secrets."""
    return orjson.dumps({kind: store.list(kind) for kind in (KEY_KIND, AUDIT_KIND, "tenant")})


def test_created_key_is_shown_once_and_works(
    client: TestClient, store: MemoryMetadataStore
) -> None:
    created = create(client, "viewer")
    assert set(created) == {"id", "name", "role", "tenant_id", "created_at", "key"}
    assert created["role"] == "viewer" and created["tenant_id"] is None
    key = created["key"]
    assert client.get("/api/v1/tenants", headers=bearer(key)).status_code == 200

    listed = client.get(KEYS, headers=ROOT).json()
    assert listed["total"] == 1
    item = listed["items"][0]
    assert set(item) == {"id", "name", "role", "tenant_id", "prefix", "created_at", "revoked_at"}
    assert item["prefix"] == key[:8] and item["revoked_at"] is None
    assert key not in client.get(KEYS, headers=ROOT).text

    stored = store.get(KEY_KIND, created["id"])
    assert stored is not None and "key" not in stored and len(stored["key_hash"]) == 64
    assert key.encode() not in all_documents(store)


def test_list_never_leaks_hashes(client: TestClient, store: MemoryMetadataStore) -> None:
    created = create(client, "operator")
    stored = store.get(KEY_KIND, created["id"])
    assert stored is not None
    text = client.get(KEYS, headers=ROOT, params={"include_revoked": True}).text
    assert stored["key_hash"] not in text and "key_hash" not in text


def test_revoked_key_stops_working(client: TestClient) -> None:
    created = create(client, "admin")
    key_headers = bearer(created["key"])
    assert client.get(KEYS, headers=key_headers).status_code == 200
    assert client.delete(f"{KEYS}/{created['id']}", headers=ROOT).status_code == 204

    r = client.get(KEYS, headers=key_headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"

    again = client.delete(f"{KEYS}/{created['id']}", headers=ROOT)
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_revoked"
    assert client.delete(f"{KEYS}/nope", headers=ROOT).status_code == 404

    assert client.get(KEYS, headers=ROOT).json()["total"] == 0
    listed = client.get(KEYS, headers=ROOT, params={"include_revoked": "true"}).json()
    assert listed["total"] == 1 and listed["items"][0]["revoked_at"] is not None


@pytest.mark.parametrize("headers", [{}, bearer("llmt_wrong"), {"Authorization": "Basic abc"}])
def test_missing_or_wrong_key_is_401(client: TestClient, headers: dict[str, str]) -> None:
    r = client.get(KEYS, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "unauthorized"
    assert client.post(KEYS, json={"name": "n", "role": "viewer"}, headers=headers).status_code == (
        401
    )


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_non_admin_cannot_manage_keys(client: TestClient, role: str) -> None:
    created = create(client, role)
    headers = bearer(created["key"])
    for r in (
        client.get(KEYS, headers=headers),
        client.post(KEYS, json={"name": "n", "role": "viewer"}, headers=headers),
        client.delete(f"{KEYS}/{created['id']}", headers=headers),
    ):
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "forbidden"


def test_scoped_admin_stays_in_its_tenant(client: TestClient) -> None:
    scoped = create(client, "admin", "acme")
    other = create(client, "viewer", "globex")
    unscoped = create(client, "viewer")
    headers = bearer(scoped["key"])

    # Without tenant_id the new key is scoped to the caller's tenant, never unscoped.
    child = create(client, "viewer", as_=headers)
    assert child["tenant_id"] == "acme"
    assert create(client, "operator", "acme", as_=headers)["tenant_id"] == "acme"
    r = client.post(
        KEYS, json={"name": "n", "role": "admin", "tenant_id": "globex"}, headers=headers
    )
    assert r.status_code == 403

    listed = client.get(KEYS, headers=headers).json()
    assert {k["tenant_id"] for k in listed["items"]} == {"acme"}
    assert listed["total"] == 3
    assert client.get(KEYS, headers=headers, params={"tenant_id": "globex"}).status_code == 403

    # Other tenants' keys and unscoped keys look absent.
    assert client.delete(f"{KEYS}/{other['id']}", headers=headers).status_code == 404
    assert client.delete(f"{KEYS}/{unscoped['id']}", headers=headers).status_code == 404
    assert client.delete(f"{KEYS}/{child['id']}", headers=headers).status_code == 204


def test_filters_and_pagination(client: TestClient) -> None:
    for _ in range(3):
        create(client, "viewer", "t1")
    for _ in range(2):
        create(client, "operator")
    page = client.get(KEYS, headers=ROOT, params={"limit": 2, "offset": 0}).json()
    assert (page["total"], len(page["items"]), page["limit"], page["offset"]) == (5, 2, 2, 0)
    rest = client.get(KEYS, headers=ROOT, params={"limit": 2, "offset": 4}).json()
    assert rest["total"] == 5 and len(rest["items"]) == 1
    ids = [
        k["id"]
        for off in (0, 2, 4)
        for k in client.get(KEYS, headers=ROOT, params={"limit": 2, "offset": off}).json()["items"]
    ]
    assert len(set(ids)) == 5

    assert client.get(KEYS, headers=ROOT, params={"role": "viewer"}).json()["total"] == 3
    assert client.get(KEYS, headers=ROOT, params={"tenant_id": "t1"}).json()["total"] == 3
    assert client.get(KEYS, headers=ROOT, params={"role": "admin"}).json()["total"] == 0


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("post", {"json": {"name": "", "role": "viewer"}}),
        ("post", {"json": {"name": "x" * 101, "role": "viewer"}}),
        ("post", {"json": {"name": "n", "role": "root"}}),
        ("post", {"json": {"name": "n", "role": "viewer", "key": "llmt_chosen"}}),
        ("post", {"json": {"name": "n", "role": "viewer", "tenant_id": "a/b"}}),
        ("get", {"params": {"limit": 0}}),
        ("get", {"params": {"limit": 1001}}),
        ("get", {"params": {"offset": -1}}),
        ("get", {"params": {"role": "root"}}),
    ],
)
def test_invalid_requests_are_422(client: TestClient, method: str, kwargs: dict[str, Any]) -> None:
    r = getattr(client, method)(KEYS, headers=ROOT, **kwargs)
    assert r.status_code == 422
    body = r.json()
    assert body["error"]["code"] == "invalid_parameters" and body["error"]["message"]


def test_audit_events_hold_no_secret(client: TestClient, store: MemoryMetadataStore) -> None:
    created = create(client, "operator", "acme")
    assert client.delete(f"{KEYS}/{created['id']}", headers=ROOT).status_code == 204
    events = sorted(store.list(AUDIT_KIND), key=lambda e: e["id"])
    assert [e["action"] for e in events] == ["api_key.create", "api_key.revoke"]
    for event in events:
        assert event["target_kind"] == KEY_KIND and event["target_id"] == created["id"]
        assert event["tenant_id"] == "acme" and event["details"]["role"] == "operator"
        assert event["actor_key_id"] == "bootstrap"
    assert created["key"].encode() not in all_documents(store)


def test_keys_persist_in_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    first = SqliteMetadataStore(path)
    created = create(make_client(first), "viewer", "acme")
    first.close()

    second = SqliteMetadataStore(path)
    try:
        client = make_client(second)
        assert client.get("/api/v1/tenants", headers=bearer(created["key"])).status_code == 200
        assert client.delete(f"{KEYS}/{created['id']}", headers=ROOT).status_code == 204
        assert client.get("/api/v1/tenants", headers=bearer(created["key"])).status_code == 401
        assert created["key"].encode() not in all_documents(second)
    finally:
        second.close()


def test_openapi_documents_the_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    create_op = spec["paths"][KEYS]["post"]
    assert "201" in create_op["responses"] and "401" in create_op["responses"]
    assert "409" in spec["paths"][f"{KEYS}/{{key_id}}"]["delete"]["responses"]
    assert "key_hash" not in orjson.dumps(spec["components"]["schemas"]["KeyInfo"]).decode()
