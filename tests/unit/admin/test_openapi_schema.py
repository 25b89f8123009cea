"""Property test of the admin API against its own OpenAPI document (schemathesis).

Every operation gets generated requests, valid and invalid: none may answer 5xx, and every
answer must be documented (status, content type, body schema). The app under test comes from
`make_app()` alone, so pointing this at the full admin app is a one-function change.
"""

from __future__ import annotations

import time
from typing import Any

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from extproc.admin.app import create_admin_app
from extproc.admin.context import AdminContext
from extproc.config import Config, load_config
from extproc.storage.metadata import MemoryMetadataStore
from extproc.storage.model import SpanRecord, StoredFinding
from extproc.storage.stores import MemoryTraceStore
from extproc.telemetry.metrics import Metrics

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _spans() -> list[SpanRecord]:
    """A few stored requests, so the generated queries also reach non-empty answers."""
    now = time.time()
    finding = StoredFinding("email", "pii", 2, 0.9, "request:m[0]:1-9", "pii.email", "regex")
    return [
        SpanRecord(
            trace_id=f"trace{n}",
            span_id=f"trace{n}",
            tenant_id=f"t{n % 2}",
            agent_id="agent",
            created_at=now - n * 600,
            operation_name="chat_completion",
            decision=("allowed", "flagged", "blocked")[n % 3],
            security_score=45 if n % 2 else 0,
            model_name="gpt-4o",
            prompt="user: hello",
            prompt_tokens=n,
            completion_tokens=2 * n,
            latency_ms=10.0 * n,
            estimated_cost_usd=0.001 * n,
            source_ip=f"10.0.0.{n}",
            findings=(finding,) if n % 2 else (),
        )
        for n in range(12)
    ]


def make_app() -> FastAPI:
    """The full admin app over in-memory stores, with a config it can apply flags to."""
    holder = {"config": load_config(environ={})}
    store = MemoryTraceStore()
    store.write(_spans())

    def apply(config: Config) -> None:
        holder["config"] = config

    ctx = AdminContext(
        config=lambda: holder["config"],
        metrics=Metrics(),
        health=lambda: {"status": "ok"},
        metadata=MemoryMetadataStore(),
        store=store,
        apply_config=apply,
    )
    return create_admin_app(ctx)


# Loaded eagerly at collection: schemathesis' lazy `pytest.from_fixture` loader does not work
# with pytest 9 (it sets the removed `Node._nodeid`).
schema = schemathesis.openapi.from_asgi("/api-doc/openapi.json", make_app())


@schema.parametrize()
# Derandomized: CI must not fail on a new random draw. To explore, set
# derandomize=False locally (an integer beyond 64 bits in tenant metadata was found that way).
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_conforms(case: schemathesis.Case[Any]) -> None:
    """No 5xx, and every answer matches the documented responses."""
    case.call_and_validate(checks=CHECKS)
