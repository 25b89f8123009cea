"""Tenant routes of the admin API: create, list, read, update and delete tenants.

A tenant is a metadata document (kind `tenant`, id = the tenant id, tenant_id column = the
same id). Trace data is keyed by tenant ids taken from request headers, so a tenant document
is descriptive (name, plan, metadata): traffic for an unregistered tenant id still works.
Deleting a tenant revokes its API keys, so a recreated tenant of the same id does not
inherit keys handed out for the old one.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the route signatures, whose
# Annotated[..., Depends(...)] refer to this function's locals (ctx), at definition time.

import threading
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from extproc.admin.audit import audit
from extproc.admin.auth import KEY_KIND, Principal, check_tenant, require
from extproc.admin.context import AdminContext
from extproc.admin.errors import ERROR_RESPONSES, ApiError, ErrorResponse
from extproc.admin.paging import page

TENANT_KIND = "tenant"
MAX_METADATA_BYTES = 16 * 1024  # metadata is labels, not a blob store

# Path-safe (no "/", no whitespace) so every id can be addressed as /api/v1/tenants/{id}.
TenantId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")
]
TenantName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Plan = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]

# 409 is not in the shared ERROR_RESPONSES; these routes can answer it.
CONFLICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    409: {"model": ErrorResponse, "description": "Conflicts with the stored state"},
}


def now_iso() -> str:
    """The current UTC time, ISO 8601 with fixed precision (so strings sort as times)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _check_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return value
    try:
        size = len(orjson.dumps(value))
    except TypeError:  # orjson.JSONEncodeError: e.g. an integer beyond 64 bits
        raise ValueError("metadata must be JSON with integers within 64 bits") from None
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"metadata must serialize to at most {MAX_METADATA_BYTES} bytes")
    return value


class TenantCreate(BaseModel):
    """Body of POST /api/v1/tenants."""

    model_config = ConfigDict(extra="forbid")

    name: TenantName
    id: TenantId | None = Field(None, description="Tenant id; a random UUID when absent.")
    plan: Plan | None = None
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free-form labels.")

    _metadata_size = field_validator("metadata")(_check_metadata)


class TenantUpdate(BaseModel):
    """Body of PUT /api/v1/tenants/{id}: only the fields sent change (plan: null clears it)."""

    model_config = ConfigDict(extra="forbid")

    name: TenantName | None = None
    plan: Plan | None = None
    metadata: dict[str, Any] | None = Field(None, description="Replaces the whole object.")

    _metadata_size = field_validator("metadata")(_check_metadata)


class Tenant(BaseModel):
    """A tenant as returned by the API."""

    id: str
    name: str
    plan: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class TenantList(BaseModel):
    """One page of tenants."""

    items: list[Tenant]
    total: int = Field(description="Matching tenants over all pages.")
    limit: int
    offset: int


def _newest_first(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Stable across pages: the store orders by last update, which a PUT would reshuffle.
    return sorted(docs, key=lambda d: (d.get("created_at", ""), d.get("id", "")), reverse=True)


def build_router(ctx: AdminContext) -> APIRouter:
    """The /api/v1/tenants routes."""
    router = APIRouter(prefix="/api/v1/tenants", tags=["tenants"])
    # Serializes check-then-write (create's 409, update's read-modify-write) in this process.
    lock = threading.Lock()

    @router.post(
        "",
        status_code=201,
        response_model=Tenant,
        responses=CONFLICT_RESPONSES,
        summary="Create a tenant",
    )
    def create_tenant(
        body: TenantCreate, principal: Annotated[Principal, Depends(require(ctx, "admin"))]
    ) -> dict[str, Any]:
        """Create a tenant (409 when the id is taken); tenant-scoped keys may not."""
        if principal.tenant_id is not None:
            raise ApiError(403, "forbidden", "A tenant-scoped key cannot create tenants.")
        tenant_id = body.id or str(uuid.uuid4())
        now = now_iso()
        doc = {
            "id": tenant_id,
            "name": body.name,
            "plan": body.plan,
            "metadata": body.metadata,
            "created_at": now,
            "updated_at": now,
        }
        with lock:
            if ctx.metadata.get(TENANT_KIND, tenant_id) is not None:
                raise ApiError(409, "conflict", f"Tenant {tenant_id!r} already exists.")
            ctx.metadata.put(TENANT_KIND, tenant_id, doc, tenant_id)
        audit(
            ctx.metadata,
            principal,
            "tenant.create",
            TENANT_KIND,
            tenant_id,
            tenant_id=tenant_id,
            details={"name": body.name, "plan": body.plan},
        )
        return doc

    @router.get("", response_model=TenantList, responses=ERROR_RESPONSES, summary="List tenants")
    def list_tenants(
        principal: Annotated[Principal, Depends(require(ctx, "viewer"))],
        name: Annotated[
            str | None,
            Query(max_length=200, description="Case-insensitive substring of the name."),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Tenants, newest first; a tenant-scoped key sees only its own."""
        docs = ctx.metadata.list(TENANT_KIND, principal.tenant_id)
        if principal.tenant_id is not None:
            # The tenant_id column is the tenant's id, but filter on the document too.
            docs = [d for d in docs if d.get("id") == principal.tenant_id]
        if name:
            needle = name.casefold()
            docs = [d for d in docs if needle in str(d.get("name", "")).casefold()]
        docs = _newest_first(docs)
        return page(docs, limit, offset)

    @router.get(
        "/{tenant_id}", response_model=Tenant, responses=ERROR_RESPONSES, summary="Get a tenant"
    )
    def get_tenant(
        tenant_id: str, principal: Annotated[Principal, Depends(require(ctx, "viewer"))]
    ) -> dict[str, Any]:
        """One tenant; 404 when unknown or outside a scoped key's tenant."""
        check_tenant(principal, tenant_id)
        doc = ctx.metadata.get(TENANT_KIND, tenant_id)
        if doc is None:
            raise ApiError(404, "not_found", f"No tenant {tenant_id!r}.")
        return doc

    @router.put(
        "/{tenant_id}",
        response_model=Tenant,
        responses=ERROR_RESPONSES,
        summary="Update a tenant",
    )
    def update_tenant(
        tenant_id: str,
        body: TenantUpdate,
        principal: Annotated[Principal, Depends(require(ctx, "admin"))],
    ) -> dict[str, Any]:
        """Change the fields sent (name, plan, metadata); 404 when unknown."""
        check_tenant(principal, tenant_id)
        changes = body.model_dump(include=body.model_fields_set)
        if changes.get("name", "") is None:
            raise ApiError(422, "invalid_parameters", "name: cannot be null")
        if "metadata" in changes and changes["metadata"] is None:
            changes["metadata"] = {}
        with lock:
            doc = ctx.metadata.get(TENANT_KIND, tenant_id)
            if doc is None:
                raise ApiError(404, "not_found", f"No tenant {tenant_id!r}.")
            if not changes:
                return doc
            doc.update(changes)
            doc["updated_at"] = now_iso()
            ctx.metadata.put(TENANT_KIND, tenant_id, doc, tenant_id)
        audit(
            ctx.metadata,
            principal,
            "tenant.update",
            TENANT_KIND,
            tenant_id,
            tenant_id=tenant_id,
            details={"fields": sorted(changes)},
        )
        return doc

    @router.delete(
        "/{tenant_id}",
        status_code=204,
        response_class=Response,
        responses=ERROR_RESPONSES,
        summary="Delete a tenant and revoke its API keys",
    )
    def delete_tenant(
        tenant_id: str, principal: Annotated[Principal, Depends(require(ctx, "admin"))]
    ) -> Response:
        """Delete a tenant (404 when unknown) and revoke the API keys scoped to it."""
        check_tenant(principal, tenant_id)
        with lock:
            if not ctx.metadata.delete(TENANT_KIND, tenant_id):
                raise ApiError(404, "not_found", f"No tenant {tenant_id!r}.")
        revoked = _revoke_tenant_keys(ctx, tenant_id)
        audit(
            ctx.metadata,
            principal,
            "tenant.delete",
            TENANT_KIND,
            tenant_id,
            tenant_id=tenant_id,
            details={"revoked_key_ids": revoked},
        )
        return Response(status_code=204)

    return router


def _revoke_tenant_keys(ctx: AdminContext, tenant_id: str) -> list[str]:
    """Revoke every active key scoped to a tenant; their ids."""
    revoked = []
    now = now_iso()
    for doc in ctx.metadata.list(KEY_KIND, tenant_id):
        if doc.get("tenant_id") == tenant_id and doc.get("revoked_at") is None:
            doc["revoked_at"] = now
            ctx.metadata.put(KEY_KIND, doc["id"], doc, tenant_id)
            revoked.append(str(doc["id"]))
    return revoked
