"""ext_authz's decision: the same Gate and Inspector the ext_proc edge uses, in one call.

ext_authz sees the request once (headers, and the body when Envoy is configured with
`with_request_body`) and can only allow (adding headers) or deny. So, unlike ext_proc, it
cannot redact a prompt or clamp `max_tokens`: a request that would need either is refused
with a message saying what to change, and a flag-only finding travels as headers.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Sequence

from extproc.dialects.base import DialectError, Segment
from extproc.dialects.routing import dialect_for_path, parse_json
from extproc.policy.actions import client_ip
from extproc.policy.breaker import CircuitOpen
from extproc.policy.decision import Decision, Verdict, finding_types
from extproc.policy.gate import Admission, AuthzInput, Caller, Denial
from extproc.server.processor import (
    FINDINGS_HEADER,
    FLAGGED_HEADER,
    TRACE_HEADER,
    Engine,
    stored_findings,
)
from extproc.server.tenancy import agent_from_headers, tenant_from_headers
from extproc.telemetry.records import RequestRecord

log = logging.getLogger("extproc.authz")


class AuthzDecider:
    """`decide` for the Authorizer servicer, reading the current engine on every call."""

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self._engine = engine

    async def __call__(self, request: AuthzInput) -> Admission:
        """Admit or deny one request."""
        engine = self._engine()
        trace_id = f"{random.getrandbits(128):032x}"
        headers = request.headers
        source = client_ip(
            headers.get("x-forwarded-for"),
            request.source_ip,
            engine.config.action_router.trusted_hops,
        )
        caller = Caller(
            tenant_from_headers(headers), agent_from_headers(headers), source, request.path
        )
        allow_headers = {TRACE_HEADER: trace_id}
        gate = engine.gate
        if gate is not None:
            denial = await gate.admit(caller)
            if denial is not None:
                return self._deny(engine, denial, trace_id, request.path)
        dialect = dialect_for_path(request.path)
        if request.body is None or dialect is None:
            return Admission(None, allow_headers, (FLAGGED_HEADER, FINDINGS_HEADER), trace_id)
        if request.body_truncated:
            # Half a prompt cannot be judged; letting it through unread would be a bypass.
            return self._deny(
                engine,
                Denial(
                    413,
                    "Request body is larger than the configured limit.",
                    "request_too_large",
                    "too_large",
                ),
                trace_id,
                request.path,
            )
        try:
            parsed = parse_json(request.body)
            segments = dialect.extract_request(request.path, parsed)
        except DialectError as exc:
            return self._deny(
                engine, Denial(400, str(exc), "invalid_request", "malformed"), trace_id, "body"
            )
        if gate is not None:
            tokens = gate.check_tokens(caller, parsed, segments, can_rewrite=False)
            if tokens.denial is not None:
                return self._deny(engine, tokens.denial, trace_id, request.path)
        if not (engine.analysis_enabled and engine.config.authz.scan_body):
            return Admission(None, allow_headers, (FLAGGED_HEADER, FINDINGS_HEADER), trace_id)
        try:
            inspection = await engine.breaker.call(
                functools.partial(engine.inspector.request, segments, parsed, None)
            )
        except CircuitOpen:
            return self._unanalysed(engine, trace_id, dialect.name, allow_headers, request.path)
        decision = inspection.decision
        for f in decision.findings:
            engine.metrics.inc(engine.metrics.findings, f.type, str(f.severity), "request")
        if decision.findings and engine.alerts is not None:
            engine.alerts.findings(decision.findings, tenant_id=caller.tenant_id, trace_id=trace_id)
        if decision.findings and gate is not None:
            engine.track(gate.act_on(caller, trace_id, decision.findings))
        self._record(engine, caller, trace_id, dialect.name, decision, segments)
        if decision.blocked:
            types = ", ".join(finding_types(decision.blocked))
            log.info(
                "blocked (ext_authz) trace=%s tenant=%s findings=%s",
                trace_id,
                caller.tenant_id,
                types,
            )
            engine.metrics.inc(engine.metrics.requests, Verdict.BLOCKED.value, dialect.name)
            denial = Denial(
                decision.status,
                f"Request blocked by security policy: {types}",
                "content_policy_violation",
                "blocked",
            )
            return Admission(denial, trace_id=trace_id)
        if inspection.body is not None:
            # The policy wants the prompt rewritten (redaction); ext_authz cannot do that.
            denial = Denial(
                400,
                "This request must be redacted before it can be sent, which the ext_authz "
                "filter cannot do; remove the sensitive data or route through ext_proc.",
                "content_policy_violation",
                "needs_redaction",
            )
            return self._deny(engine, denial, trace_id, request.path)
        engine.metrics.inc(engine.metrics.requests, decision.verdict.value, dialect.name)
        if decision.flagged:
            allow_headers[FLAGGED_HEADER] = "true"
            allow_headers[FINDINGS_HEADER] = ",".join(finding_types(decision.flagged))
            return Admission(None, allow_headers, (), trace_id)
        return Admission(None, allow_headers, (FLAGGED_HEADER, FINDINGS_HEADER), trace_id)

    @staticmethod
    def _deny(engine: Engine, denial: Denial, trace_id: str, path: str) -> Admission:
        dialect = dialect_for_path(path)
        label = dialect.name if dialect is not None else "unknown"
        engine.metrics.inc(engine.metrics.requests, denial.reason, label)
        return Admission(denial, trace_id=trace_id)

    @staticmethod
    def _unanalysed(
        engine: Engine, trace_id: str, dialect: str, allow_headers: dict[str, str], path: str
    ) -> Admission:
        """The analysis breaker is open: allow unscanned, or refuse with 503 (fail-closed)."""
        if engine.config.server.failure_mode == "closed":
            denial = Denial(
                503,
                "Security analysis is temporarily unavailable; request refused (fail-closed).",
                "analysis_unavailable",
                "analysis_unavailable",
            )
            return AuthzDecider._deny(engine, denial, trace_id, path)
        engine.metrics.inc(engine.metrics.unscanned, "request", "circuit_open")
        engine.metrics.inc(engine.metrics.requests, "unscanned", dialect)
        return Admission(None, allow_headers, (FLAGGED_HEADER, FINDINGS_HEADER), trace_id)

    @staticmethod
    def _record(
        engine: Engine,
        caller: Caller,
        trace_id: str,
        dialect: str,
        decision: Decision,
        segments: Sequence[Segment],
    ) -> None:
        record = RequestRecord(
            trace_id,
            caller.tenant_id,
            caller.agent_id,
            time.time(),
            dialect=dialect,
            source_ip=caller.source_ip,
        )
        record.operation_name = "authz_check"
        record.decision = decision.verdict.value
        record.status_code = decision.status if decision.blocked else None
        record.finding_types = finding_types(decision.findings)
        record.findings = stored_findings(decision.findings, "request", segments)
        engine.store(record)
