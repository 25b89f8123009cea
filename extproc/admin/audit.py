"""Audit events: who changed a key, tenant, feature flag or report, and when."""

from __future__ import annotations

import secrets
import time
from typing import Any

from extproc.admin.auth import Principal
from extproc.storage.metadata import MetadataStore

AUDIT_KIND = "audit_event"


def audit(
    metadata: MetadataStore,
    principal: Principal,
    action: str,
    target_kind: str,
    target_id: str,
    *,
    tenant_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Store one audit event (e.g. action "api_key.create") and return it. Never holds secrets."""
    now = time.time()
    event_id = f"{int(now * 1000):013d}-{secrets.token_hex(4)}"
    event = {
        "id": event_id,
        "timestamp": now,
        "actor_key_id": principal.key_id,
        "actor_role": principal.role,
        "action": action,
        "target_kind": target_kind,
        "target_id": target_id,
        "tenant_id": tenant_id,
        "details": details or {},
    }
    metadata.put(AUDIT_KIND, event_id, event, tenant_id)
    return event
