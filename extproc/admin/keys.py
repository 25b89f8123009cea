"""API-key routes of the admin API: create (the key is shown once), list, revoke.

Keys are stored as metadata documents of kind `api_key` under `key_id_of(hash)`, holding the
SHA-256 `key_hash` and a short display `prefix`, never the key itself. Revoking keeps the
document (with `revoked_at`) so audit events and listings still resolve the id; `authenticate`
rejects a revoked key on its next request.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the route signatures, whose
# Annotated[..., Depends(...)] refer to this function's locals (ctx), at definition time.

import threading
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from extproc.admin.audit import audit
from extproc.admin.auth import (
    KEY_KIND,
    Principal,
    Role,
    check_tenant,
    hash_key,
    key_id_of,
    new_key,
    require,
    tenant_scope,
)
from extproc.admin.context import AdminContext
from extproc.admin.errors import ERROR_RESPONSES, ApiError
from extproc.admin.paging import page
from extproc.admin.tenants import CONFLICT_RESPONSES, TenantId, now_iso

PREFIX_CHARS = 8  # shown in listings so people can tell keys apart; not enough to guess one


class KeyCreate(BaseModel):
    """Body of POST /api/v1/auth/keys."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    role: Role
    tenant_id: TenantId | None = Field(
        None, description="Scope the key to one tenant; a tenant-scoped caller's own when absent."
    )


class KeyInfo(BaseModel):
    """An API key as listed: no hash, no key."""

    id: str
    name: str
    role: Role
    tenant_id: str | None
    prefix: str = Field(description="The key's first characters, for telling keys apart.")
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(BaseModel):
    """The answer to a create: the only time the plaintext key is shown."""

    id: str
    name: str
    role: Role
    tenant_id: str | None
    created_at: datetime
    key: str = Field(description="The API key; store it now, it cannot be shown again.")


class KeyList(BaseModel):
    """One page of API keys."""

    items: list[KeyInfo]
    total: int = Field(description="Matching keys over all pages.")
    limit: int
    offset: int


def build_router(ctx: AdminContext) -> APIRouter:
    """The /api/v1/auth/keys routes (admin only)."""
    router = APIRouter(prefix="/api/v1/auth/keys", tags=["auth"])
    lock = threading.Lock()  # revoke is read-modify-write; keep the 409 honest in-process
    admin = require(ctx, "admin")

    @router.post(
        "",
        status_code=201,
        response_model=KeyCreated,
        responses=ERROR_RESPONSES,
        summary="Create an API key (shown once)",
    )
    def create_key(
        body: KeyCreate, principal: Annotated[Principal, Depends(admin)]
    ) -> dict[str, Any]:
        """Create a key; a tenant-scoped admin can only create keys for its own tenant."""
        # Scoped callers: None becomes their tenant, another tenant is 403, so a scoped key
        # can never mint an unscoped (all-tenant) key.
        tenant_id = tenant_scope(principal, body.tenant_id)
        key = new_key()
        digest = hash_key(key)
        key_id = key_id_of(digest)
        doc = {
            "id": key_id,
            "name": body.name,
            "role": body.role,
            "tenant_id": tenant_id,
            "key_hash": digest,
            "prefix": key[:PREFIX_CHARS],
            "created_at": now_iso(),
            "revoked_at": None,
        }
        ctx.metadata.put(KEY_KIND, key_id, doc, tenant_id)
        audit(
            ctx.metadata,
            principal,
            "api_key.create",
            KEY_KIND,
            key_id,
            tenant_id=tenant_id,
            details={"name": body.name, "role": body.role},
        )
        return {**doc, "key": key}

    @router.get("", response_model=KeyList, responses=ERROR_RESPONSES, summary="List API keys")
    def list_keys(
        principal: Annotated[Principal, Depends(admin)],
        role: Role | None = None,
        tenant_id: Annotated[str | None, Query(max_length=128)] = None,
        include_revoked: bool = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Keys, newest first, without secrets; a tenant-scoped key sees its tenant's only."""
        scope = tenant_scope(principal, tenant_id)
        docs = [
            d
            for d in ctx.metadata.list(KEY_KIND, scope)
            if (scope is None or d.get("tenant_id") == scope)
            and (role is None or d.get("role") == role)
            and (include_revoked or d.get("revoked_at") is None)
        ]
        # Order by creation, not by the store's last update, so a revoke does not reshuffle.
        docs.sort(key=lambda d: (d.get("created_at", ""), d.get("id", "")), reverse=True)
        return page(docs, limit, offset)

    @router.delete(
        "/{key_id}",
        status_code=204,
        response_class=Response,
        responses=CONFLICT_RESPONSES,
        summary="Revoke an API key",
    )
    def revoke_key(key_id: str, principal: Annotated[Principal, Depends(admin)]) -> Response:
        """Revoke a key at once: 404 when unknown (or another tenant's), 409 when revoked."""
        with lock:
            doc = ctx.metadata.get(KEY_KIND, key_id)
            # The same answer for unknown and other-tenant keys, so ids cannot be probed.
            if doc is None:
                raise ApiError(404, "not_found", "Not found.")
            check_tenant(principal, doc.get("tenant_id"))
            if doc.get("revoked_at") is not None:
                raise ApiError(409, "already_revoked", f"API key {key_id!r} is already revoked.")
            doc["revoked_at"] = now_iso()
            ctx.metadata.put(KEY_KIND, key_id, doc, doc.get("tenant_id"))
        audit(
            ctx.metadata,
            principal,
            "api_key.revoke",
            KEY_KIND,
            key_id,
            tenant_id=doc.get("tenant_id"),
            details={"name": doc.get("name"), "role": doc.get("role")},
        )
        return Response(status_code=204)

    return router
