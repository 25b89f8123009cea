"""API-key authentication for the admin API: roles, tenant scope, constant-time checks.

Keys are random strings shown once at creation and stored only as SHA-256 hashes in the
metadata store (kind `api_key`, id = the first 16 hex digits of the hash). A key is
`admin` (everything), `operator` (read + feature flags) or `viewer` (read only), and may be
scoped to one tenant, in which case it sees only that tenant's data.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from fastapi import Request

from extproc.admin.context import AdminContext
from extproc.admin.errors import ApiError

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
KEY_KIND = "api_key"
KEY_PREFIX = "llmt_"
_BEARER = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of an admin route."""

    key_id: str  # "bootstrap" for auth.admin_key, "anonymous" when auth is off
    role: Role
    tenant_id: str | None = None  # None: every tenant

    def allows(self, role: Role) -> bool:
        """True when this principal's role is at least `role`."""
        return ROLES.index(self.role) >= ROLES.index(role)


ANONYMOUS = Principal("anonymous", "admin")


def hash_key(key: str) -> str:
    """SHA-256 hex of a key, as stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key_hash: str) -> str:
    """The id a key is stored under."""
    return key_hash[:16]


def new_key() -> str:
    """A fresh random key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def authenticate(ctx: AdminContext, authorization: str | None) -> Principal:
    """The principal for an `Authorization` header; ApiError 401 when missing or wrong."""
    auth = ctx.config().auth
    if not auth.enabled:
        return ANONYMOUS
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "Send Authorization: Bearer <api key>.", _BEARER)
    if auth.admin_key and hmac.compare_digest(token.encode(), auth.admin_key.encode()):
        return Principal("bootstrap", "admin")
    digest = hash_key(token)
    doc = ctx.metadata.get(KEY_KIND, key_id_of(digest))
    if (
        doc is None
        or doc.get("revoked_at") is not None
        or not hmac.compare_digest(str(doc.get("key_hash", "")), digest)
    ):
        raise ApiError(401, "unauthorized", "Invalid or revoked API key.", _BEARER)
    return Principal(doc["id"], doc["role"], doc.get("tenant_id"))


def require(ctx: AdminContext, role: Role) -> Callable[[Request], Principal]:
    """A FastAPI dependency: the caller, who must hold at least `role` (else 401/403)."""

    def dependency(request: Request) -> Principal:
        principal = authenticate(ctx, request.headers.get("authorization"))
        if not principal.allows(role):
            raise ApiError(
                403, "forbidden", f"This needs the {role} role; the key has {principal.role}."
            )
        return principal

    return dependency


def tenant_scope(principal: Principal, requested: str | None) -> str | None:
    """The tenant a query may see: a scoped key is held to its tenant (403 for another)."""
    if principal.tenant_id is None:
        return requested
    if requested is not None and requested != principal.tenant_id:
        raise ApiError(403, "forbidden", "This key is scoped to another tenant.")
    return principal.tenant_id


def check_tenant(principal: Principal, tenant_id: str | None) -> None:
    """404 when a scoped key reads another tenant's object (a 403 would confirm it exists)."""
    if principal.tenant_id is not None and tenant_id != principal.tenant_id:
        raise ApiError(404, "not_found", "Not found.")
