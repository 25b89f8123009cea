"""Tenant routes: CRUD, roles, tenant scope, audit, validation, pagination, persistence."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from extproc.admin.audit import AUDIT_KIND
from extproc.storage.metadata import MemoryMetadataStore, SqliteMetadataStore
from tests.unit.admin.metadata_app import ROOT, make_client

TENANTS = "/api/v1/tenants"


def key_for(client: TestClient, role: str, tenant_id: str | None = None) -> dict[str, str]:
    """Authorization headers for a fresh key of `role` (scoped to `tenant_id` if given)."""
    body: dict[str, Any] = {"name": role, "role": role}
    if tenant_id is not None:
        body["tenant_id"] = tenant_id
    r = client.post("/api/v1/auth/keys", json=body, headers=ROOT)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


def new_tenant(client: TestClient, **body: Any) -> dict[str, Any]:
    body.setdefault("name", "Acme")
    r = client.post(TENANTS, json=body, headers=ROOT)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def test_create_get_update_delete(client: TestClient) -> None:
    created = new_tenant(client, id="acme", name="Acme Corp", plan="pro", metadata={"region": "eu"})
    assert created["id"] == "acme" and created["plan"] == "pro"
    assert created["metadata"] == {"region": "eu"}
    assert created["created_at"] == created["updated_at"]
    assert client.get(f"{TENANTS}/acme", headers=ROOT).json() == created

    r = client.put(f"{TENANTS}/acme", json={"plan": "enterprise"}, headers=ROOT)
    assert r.status_code == 200
    updated = r.json()
    assert updated["plan"] == "enterprise" and updated["name"] == "Acme Corp"
    assert updated["metadata"] == {"region": "eu"} and updated["updated_at"] > created["updated_at"]
    cleared = client.put(f"{TENANTS}/acme", json={"plan": None, "metadata": {}}, headers=ROOT)
    assert cleared.json()["plan"] is None and cleared.json()["metadata"] == {}

    assert client.delete(f"{TENANTS}/acme", headers=ROOT).status_code == 204
    assert client.get(f"{TENANTS}/acme", headers=ROOT).status_code == 404
    assert client.delete(f"{TENANTS}/acme", headers=ROOT).status_code == 404
    assert client.put(f"{TENANTS}/acme", json={"name": "x"}, headers=ROOT).status_code == 404


def test_id_defaults_to_uuid_and_duplicates_conflict(client: TestClient) -> None:
    created = new_tenant(client)
    assert uuid.UUID(created["id"]).version == 4 and created["plan"] is None
    r = client.post(TENANTS, json={"id": created["id"], "name": "Again"}, headers=ROOT)
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"


def test_operator_reads_but_cannot_write(client: TestClient) -> None:
    new_tenant(client, id="acme")
    for role in ("operator", "viewer"):
        headers = key_for(client, role)
        assert client.get(TENANTS, headers=headers).json()["total"] == 1
        assert client.get(f"{TENANTS}/acme", headers=headers).status_code == 200
        for r in (
            client.post(TENANTS, json={"name": "New"}, headers=headers),
            client.put(f"{TENANTS}/acme", json={"name": "x"}, headers=headers),
            client.delete(f"{TENANTS}/acme", headers=headers),
        ):
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_unauthenticated_is_401(client: TestClient) -> None:
    r = client.get(TENANTS)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json() == {"error": {"code": "unauthorized", "message": r.json()["error"]["message"]}}
    wrong = client.get(TENANTS, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"


def test_scoped_key_sees_only_its_tenant(client: TestClient) -> None:
    new_tenant(client, id="acme")
    new_tenant(client, id="globex", name="Globex")
    headers = key_for(client, "admin", "acme")

    listed = client.get(TENANTS, headers=headers).json()
    assert [t["id"] for t in listed["items"]] == ["acme"] and listed["total"] == 1
    assert client.get(f"{TENANTS}/acme", headers=headers).status_code == 200
    for r in (
        client.get(f"{TENANTS}/globex", headers=headers),
        client.get(f"{TENANTS}/missing", headers=headers),
        client.put(f"{TENANTS}/globex", json={"name": "x"}, headers=headers),
        client.delete(f"{TENANTS}/globex", headers=headers),
    ):
        assert r.status_code == 404
    assert client.put(f"{TENANTS}/acme", json={"plan": "pro"}, headers=headers).status_code == 200
    # A scoped key cannot mint tenants (it could never see them).
    assert client.post(TENANTS, json={"name": "Mine"}, headers=headers).status_code == 403
    assert client.get(f"{TENANTS}/globex", headers=ROOT).json()["name"] == "Globex"


def test_deleting_a_tenant_revokes_its_keys(client: TestClient, store: MemoryMetadataStore) -> None:
    new_tenant(client, id="acme")
    scoped = key_for(client, "viewer", "acme")
    unscoped = key_for(client, "viewer")
    assert client.get(TENANTS, headers=scoped).status_code == 200
    assert client.delete(f"{TENANTS}/acme", headers=ROOT).status_code == 204
    assert client.get(TENANTS, headers=scoped).status_code == 401
    assert client.get(TENANTS, headers=unscoped).status_code == 200
    deleted = [e for e in store.list(AUDIT_KIND) if e["action"] == "tenant.delete"]
    assert len(deleted) == 1 and len(deleted[0]["details"]["revoked_key_ids"]) == 1


def test_name_filter_and_pagination(client: TestClient) -> None:
    for i in range(5):
        new_tenant(client, id=f"team-{i}", name=f"Team {i}")
    new_tenant(client, id="other", name="Other Org")
    page = client.get(TENANTS, headers=ROOT, params={"limit": 4}).json()
    assert (page["total"], len(page["items"]), page["limit"], page["offset"]) == (6, 4, 4, 0)
    last = client.get(TENANTS, headers=ROOT, params={"limit": 4, "offset": 4}).json()
    assert len(last["items"]) == 2
    assert {t["id"] for t in page["items"] + last["items"]} == {
        *(f"team-{i}" for i in range(5)),
        "other",
    }
    # Updating a tenant does not move it between pages.
    before = [t["id"] for t in page["items"]]
    client.put(f"{TENANTS}/team-0", json={"plan": "pro"}, headers=ROOT)
    after = client.get(TENANTS, headers=ROOT, params={"limit": 4}).json()
    assert [t["id"] for t in after["items"]] == before

    assert client.get(TENANTS, headers=ROOT, params={"name": "team"}).json()["total"] == 5
    assert client.get(TENANTS, headers=ROOT, params={"name": "ORG"}).json()["total"] == 1


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("post", TENANTS, {"json": {}}),
        ("post", TENANTS, {"json": {"name": ""}}),
        ("post", TENANTS, {"json": {"name": "x" * 201}}),
        ("post", TENANTS, {"json": {"name": "A", "id": "has space"}}),
        ("post", TENANTS, {"json": {"name": "A", "owner": "me"}}),
        ("post", TENANTS, {"json": {"name": "A", "metadata": {"blob": "x" * 20000}}}),
        ("post", TENANTS, {"json": {"name": "A", "metadata": ["not", "a", "dict"]}}),
        # Found by schemathesis: an integer beyond 64 bits once made JSON encoding fail (500).
        ("post", TENANTS, {"json": {"name": "A", "metadata": {"n": -9223372036854775809}}}),
        ("put", f"{TENANTS}/t", {"json": {"name": None}}),
        ("put", f"{TENANTS}/t", {"json": {"colour": "red"}}),
        ("get", TENANTS, {"params": {"limit": 0}}),
        ("get", TENANTS, {"params": {"offset": -5}}),
    ],
)
def test_invalid_requests_are_422(
    client: TestClient, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    new_tenant(client, id="t")
    r = getattr(client, method)(path, headers=ROOT, **kwargs)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_parameters"


def test_changes_are_audited(client: TestClient, store: MemoryMetadataStore) -> None:
    new_tenant(client, id="acme", plan="free")
    client.put(f"{TENANTS}/acme", json={"name": "Acme 2", "plan": "pro"}, headers=ROOT)
    client.delete(f"{TENANTS}/acme", headers=ROOT)
    events = sorted(store.list(AUDIT_KIND), key=lambda e: e["id"])
    assert [e["action"] for e in events] == ["tenant.create", "tenant.update", "tenant.delete"]
    assert all(e["target_id"] == "acme" and e["tenant_id"] == "acme" for e in events)
    assert events[1]["details"] == {"fields": ["name", "plan"]}
    assert all(e["actor_key_id"] == "bootstrap" and e["actor_role"] == "admin" for e in events)


def test_tenants_persist_in_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    first = SqliteMetadataStore(path)
    created = new_tenant(make_client(first), id="acme", metadata={"tier": 1})
    first.close()

    second = SqliteMetadataStore(path)
    try:
        client = make_client(second)
        assert client.get(f"{TENANTS}/acme", headers=ROOT).json() == created
        assert client.get(TENANTS, headers=ROOT).json()["total"] == 1
    finally:
        second.close()
