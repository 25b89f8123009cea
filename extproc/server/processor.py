"""The ext_proc edge: one small state machine per Envoy stream (= per HTTP request).

Envoy's filter config (envoy/envoy.yaml) sends request headers, buffers the request body,
sends response headers and buffers the response body. Phases with nothing to check are
switched off per request with `mode_override`, so most requests cost as few gRPC messages
as possible.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc.config import Config
from extproc.detect.ensemble import Ensemble
from extproc.detect.findings import Category, Finding, Role
from extproc.detect.redact import redact
from extproc.dialects.base import Dialect, DialectError, Segment
from extproc.dialects.endpoints import Endpoint, endpoint_for_path
from extproc.dialects.jsonbody import dump_json
from extproc.dialects.jsonpath import format_path
from extproc.dialects.routing import default_dialect_for_path, dialect_for_path, parse_json
from extproc.dialects.stream import Usage, decoder_for_path
from extproc.dialects.usage import estimate_tokens, merge_usage, request_model, response_usage
from extproc.policy.actions import client_ip
from extproc.policy.admission import Gate
from extproc.policy.breaker import CircuitBreaker, CircuitOpen
from extproc.policy.decision import (
    Decision,
    Verdict,
    finding_types,
    output_redaction_enabled,
    redacts_output,
)
from extproc.policy.gate import Caller, Denial
from extproc.policy.inspect import Inspection, Inspector
from extproc.policy.placeholders import Placeholders
from extproc.policy.stream_guard import StreamGuard
from extproc.server import messages
from extproc.server.streaming import SseRelay
from extproc.server.tenancy import TENANCY_HEADERS, agent_from_headers, tenant_from_headers
from extproc.storage.model import StoredFinding
from extproc.storage.writer import TraceWriter
from extproc.telemetry.alerts import AlertManager
from extproc.telemetry.anomaly import AnomalyDetector
from extproc.telemetry.metrics import Metrics
from extproc.telemetry.records import RecentRecords, RequestRecord

log = logging.getLogger("extproc.processor")

Mode = processing_mode_pb2.ProcessingMode
TRACE_HEADER = "x-llmtrace-trace-id"
FLAGGED_HEADER = "x-llmtrace-flagged"
FINDINGS_HEADER = "x-llmtrace-findings"
_JSON_TYPES = ("application/json", "+json")
_REQUEST_HEADERS = frozenset(
    {":path", ":method", "content-length", "content-encoding", "x-forwarded-for", *TENANCY_HEADERS}
)
_RESPONSE_HEADERS = frozenset({":status", "content-type", "content-encoding"})
_NO_BODIES = messages.processing_mode(request_body=Mode.NONE, response_body=Mode.NONE)


class Rejection(Exception):
    """A request answered by extproc itself with a client error (400, 413)."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class StreamState:
    """What one request has shown so far."""

    # 128 random bits like uuid4().hex; a PRNG because os.urandom is a slow syscall in VMs,
    # and trace ids are identifiers, not secrets (admin access is authenticated).
    trace_id: str = field(default_factory=lambda: f"{random.getrandbits(128):032x}")
    path: str = ""
    method: str = ""
    tenant_id: str | None = None
    agent_id: str | None = None
    dialect: Dialect | None = None
    scan_request: bool = False
    request_decision: Decision | None = None
    relay: SseRelay | None = None  # set when the response is streamed and checked
    record: RequestRecord | None = None  # what will be stored for this request
    clock: float = field(default_factory=time.perf_counter)
    usage: Usage | None = None
    injected_usage: bool = False  # we asked an OpenAI stream for usage; drop that chunk
    prompt_chars: int = 0
    completion_chars: int = 0
    response_finding_types: list[str] = field(default_factory=list)
    placeholders: Placeholders | None = None  # reversible redaction table, this request only
    stream_findings: list[Finding] = field(default_factory=list)
    source_ip: str | None = None  # Envoy's `source.address` attribute, port removed
    cap_tokens: bool = False  # a token cap applies: the body is needed even unscanned
    finished: bool = False  # the stream was ended by us (early stop); nothing more to do
    # Model runs that missed the verdict, with the direction and segments they analysed.
    late: list[tuple[asyncio.Task[list[Finding]], str, list[Segment]]] = field(default_factory=list)

    @property
    def error_dialect(self) -> Dialect:
        """The dialect errors are shaped in (OpenAI for unknown paths)."""
        return self.dialect or default_dialect_for_path(self.path)

    @property
    def dialect_label(self) -> str:
        """Metric label for the dialect."""
        return self.dialect.name if self.dialect else "unknown"

    @property
    def caller(self) -> Caller:
        """The request's caller, for admission and follow-up actions."""
        return Caller(self.tenant_id, self.agent_id, self.source_ip, self.path)


class Engine:
    """Shared, immutable per-process state: config, inspector, metrics."""

    def __init__(
        self,
        config: Config,
        inspector: Inspector,
        metrics: Metrics,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.config = config
        self.inspector = inspector
        self.metrics = metrics
        # Trips analysis to pass-through (or refusal, fail-closed) after repeated failures.
        self.breaker = breaker or CircuitBreaker("analysis", config.circuit_breaker, metrics)
        self.records = RecentRecords()
        self.writer: TraceWriter | None = None  # set by the app when storage is configured
        self.ensemble: Ensemble | None = None  # set by the app; for /health and shutdown
        self.gate: Gate | None = None  # set by the app: rate limits, budgets, caps, actions
        self.alerts: AlertManager | None = None  # set by the app: findings -> alert channels
        self.anomaly: AnomalyDetector | None = None  # set by the app: per-tenant outliers
        self.analysis_enabled = config.enable_security_analysis
        self.output_enabled = config.enable_security_analysis and config.output_safety.enabled
        streaming = config.streaming_analysis
        self.streaming_enabled = (
            config.enable_security_analysis and streaming.enabled and streaming.output_enabled
        )
        pii = config.pii
        self.reversible = pii.reversible and pii.action in ("alert_and_redact", "redact_silent")
        self.output_redactions: Callable[[Finding], bool] | None = None
        if output_redaction_enabled(config):
            self.output_redactions = functools.partial(redacts_output, config=config)
        # Response headers are needed when either kind of response check may apply.
        self.response_checks = self.output_enabled or self.streaming_enabled
        self.timeout = config.security_analysis_timeout_ms / 1000
        self._background: set[asyncio.Task[None]] = set()

    def track(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` in the background, holding a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def derive(self, config: Config, inspector: Inspector) -> Engine:
        """A new engine for a reloaded config, sharing this one's long-lived parts.

        Streams already open keep the engine they started with, so a reload never changes
        the rules halfway through a request.
        """
        # One breaker across reloads: a reload must not forget that analysis is failing.
        self.breaker.configure(config.circuit_breaker)
        engine = Engine(config, inspector, self.metrics, self.breaker)
        engine.records = self.records
        engine.writer = self.writer
        engine.ensemble = self.ensemble
        engine.gate = self.gate
        engine.alerts = self.alerts
        engine.anomaly = self.anomaly
        engine._background = self._background
        return engine

    def store(self, record: RequestRecord) -> None:
        """Keep a finished record in memory and hand it to the storage writer (never blocks)."""
        self.records.add(record)
        if self.writer is not None:
            self.writer.submit(record.to_span())

    async def drain(self, seconds: float) -> None:
        """Wait (bounded) for background work such as late-ML records before shutdown."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=seconds)


class RequestProcessor:
    """Phase methods for one stream; each returns the ProcessingResponse for its message."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.state = StreamState()

    # -- request headers -------------------------------------------------------------------
    async def request_headers(self, msg: pb.HttpHeaders) -> pb.ProcessingResponse:
        """Identify route, tenant and dialect; decide which later phases are needed."""
        headers = messages.header_map(msg, _REQUEST_HEADERS)
        st = self.state
        st.path = headers.get(":path", "")
        st.method = headers.get(":method", "")
        st.tenant_id = tenant_from_headers(headers)
        st.agent_id = agent_from_headers(headers)
        st.dialect = dialect_for_path(st.path)
        engine = self.engine
        gate = engine.gate
        if gate is not None:
            hops = engine.config.action_router.trusted_hops
            st.source_ip = client_ip(headers.get("x-forwarded-for"), st.source_ip, hops)
            denial = await gate.admit(st.caller)
            if denial is not None:
                return self.denied(denial)
        limit = engine.config.server.max_request_size_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise Rejection(413, _too_large(int(length), limit), "too_large")
        st.scan_request = (
            engine.analysis_enabled
            and not msg.end_of_stream
            and (st.dialect is not None or engine.config.security_analysis.scan_unknown_paths)
        )
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if st.scan_request and encoding != "identity":
            # A compressed body cannot be scanned, and passing it unscanned would be a bypass.
            message = f"Content-Encoding {encoding!r} is not supported; send the body uncompressed."
            raise Rejection(415, message, "encoded")
        check_response = engine.response_checks and st.dialect is not None
        st.cap_tokens = (
            gate is not None
            and st.dialect is not None
            and not msg.end_of_stream
            and gate.config.cost_caps.enabled
            and gate.config.cost_caps.token_cap_for(st.agent_id) is not None
        )
        if st.scan_request:
            st.record = RequestRecord(
                st.trace_id,
                st.tenant_id,
                st.agent_id,
                time.time(),
                dialect=st.dialect_label,
                source_ip=st.source_ip,
            )
        else:
            engine.metrics.inc(engine.metrics.requests, "unscanned", st.dialect_label)
        # Our verdict headers must come from us, never from the client.
        remove = [FLAGGED_HEADER, FINDINGS_HEADER]
        if check_response:
            remove.append("accept-encoding")  # a compressed response could not be read
        mode = None
        if not st.scan_request or not check_response:
            # Envoy copies the trace and verdict headers to the response itself (route
            # response_headers_to_add), so with nothing to check the response costs no message.
            mode = messages.processing_mode(
                request_body=Mode.BUFFERED if st.scan_request or st.cap_tokens else Mode.NONE,
                response_body=Mode.BUFFERED if check_response else Mode.NONE,
                response_headers=check_response,
            )
        return messages.request_headers_response({TRACE_HEADER: st.trace_id}, remove, mode)

    # -- request body ----------------------------------------------------------------------
    async def request_body(self, msg: pb.HttpBody) -> pb.ProcessingResponse:
        """Parse, scan and enforce; block, redact, flag or pass the body through untouched."""
        st = self.state
        engine = self.engine
        body = msg.body
        limit = engine.config.server.max_request_size_bytes
        if len(body) > limit:
            raise Rejection(413, _too_large(len(body), limit), "too_large")
        if not st.scan_request and not st.cap_tokens:
            return messages.request_body_response()
        parsed, segments = self._parse_request(body)
        clamped = False
        if st.cap_tokens and engine.gate is not None:
            tokens = engine.gate.check_tokens(st.caller, parsed, segments)
            if tokens.denial is not None:
                self._finish_record(tokens.denial.status, tokens.denial.reason)
                return self.denied(tokens.denial)
            clamped = tokens.clamped
        if not st.scan_request:
            return messages.request_body_response(dump_json(parsed) if clamped else None)
        if self.engine.reversible and parsed is not None:
            st.placeholders = Placeholders()
        try:
            inspection = await engine.breaker.call(
                functools.partial(engine.inspector.request, segments, parsed, st.placeholders)
            )
        except CircuitOpen:
            if engine.config.server.failure_mode == "closed":
                return self._unanalysed("request_body")
            self._start_record(parsed, segments)
            forward = self._ask_for_usage(parsed) or clamped
            return self._unanalysed("request_body", dump_json(parsed) if forward else None)
        self._expect_late(inspection, "request", segments)
        decision = inspection.decision
        st.request_decision = decision
        self._start_record(parsed, segments)
        if st.record is not None:
            st.record.findings += stored_findings(decision.findings, "request", segments)
            st.record.prompt = self._capture(segments, decision.findings)
        self._count_findings(decision.findings, "request")
        if decision.findings and engine.gate is not None:
            engine.track(engine.gate.act_on(st.caller, st.trace_id, decision.findings))
        if decision.blocked:
            engine.metrics.inc(engine.metrics.requests, Verdict.BLOCKED.value, st.dialect_label)
            types = ", ".join(finding_types(decision.blocked))
            log.info("blocked trace=%s tenant=%s findings=%s", st.trace_id, st.tenant_id, types)
            self._finish_record(decision.status, Verdict.BLOCKED.value)
            return self._error(
                decision.status,
                f"Request blocked by security policy: {types}",
                code="content_policy_violation",
            )
        engine.metrics.inc(engine.metrics.requests, decision.verdict.value, st.dialect_label)
        new_body = inspection.body
        if self._ask_for_usage(parsed) or clamped:
            new_body = dump_json(parsed)  # `parsed` already carries any redaction
        return messages.request_body_response(new_body, _flag_headers(decision.flagged))

    def _parse_request(self, body: bytes) -> tuple[Any, list[Segment]]:
        st = self.state
        if st.dialect is None:
            return None, _raw_segments(body)
        try:
            parsed = parse_json(body)
            return parsed, st.dialect.extract_request(st.path, parsed)
        except DialectError as exc:
            raise Rejection(400, str(exc), "malformed") from None

    def _ask_for_usage(self, parsed: Any) -> bool:
        """Add stream_options.include_usage to an OpenAI chat stream that lacks it."""
        st = self.state
        if not (
            self.engine.streaming_enabled
            and self.engine.config.streaming_analysis.include_usage
            and st.dialect is not None
            and st.dialect.name == "openai"
            and endpoint_for_path(st.path) is Endpoint.CHAT_COMPLETIONS
            and isinstance(parsed, dict)
            and parsed.get("stream") is True
        ):
            return False
        options = parsed.get("stream_options")
        if options is None:
            options = {}
        if not isinstance(options, dict) or options.get("include_usage") is True:
            return False
        parsed["stream_options"] = {**options, "include_usage": True}
        st.injected_usage = True
        return True

    # -- the request record ----------------------------------------------------------------
    def _start_record(self, parsed: Any, segments: list[Segment]) -> None:
        st = self.state
        record = st.record
        if record is None:
            return
        record.model = request_model(parsed)
        endpoint = endpoint_for_path(st.path)
        name = _OPERATIONS.get(endpoint, "request") if endpoint is not None else "request"
        streaming = isinstance(parsed, dict) and parsed.get("stream") is True
        record.operation_name = f"{name}_stream" if streaming else name
        st.prompt_chars = sum(len(seg.text) for seg in segments)

    def _finish_record(self, status: int | None, decision: str) -> None:
        st = self.state
        record, st.record = st.record, None
        if record is None:
            return
        metrics = self.engine.metrics
        record.status_code = status if record.status_code is None else record.status_code
        record.decision = decision
        record.latency_ms = (time.perf_counter() - st.clock) * 1000
        findings = st.request_decision.findings if st.request_decision else ()
        record.finding_types = finding_types(findings) + st.response_finding_types
        usage = st.usage or Usage(None, None)
        prompt_source = completion_source = "usage"
        record.prompt_tokens = usage.prompt_tokens
        record.completion_tokens = usage.completion_tokens
        if record.prompt_tokens is None:
            record.prompt_tokens, prompt_source = estimate_tokens(st.prompt_chars), "estimate"
        if record.completion_tokens is None and decision != Verdict.BLOCKED.value:
            record.completion_tokens = estimate_tokens(st.completion_chars)
            completion_source = "estimate"
        sources = {prompt_source, completion_source}
        record.usage_source = sources.pop() if len(sources) == 1 else "partial"
        gate = self.engine.gate
        if gate is not None and decision not in _NOT_FORWARDED:
            record.cost_usd = gate.cost(
                record.model, record.prompt_tokens, record.completion_tokens
            )
            if record.cost_usd:
                self.engine.track(gate.record_spend(st.caller, record.cost_usd))
        if self.engine.anomaly is not None and decision not in _NOT_FORWARDED:
            self._observe(record)
        metrics.child(metrics.tokens, "prompt", prompt_source).inc(record.prompt_tokens)
        if record.completion_tokens:
            metrics.child(metrics.tokens, "completion", completion_source).inc(
                record.completion_tokens
            )
        if st.late:
            # Model results still running: store the record when they land, not before.
            self.engine.track(self._record_after_late(record, st.late))
            st.late = []
            return
        self._store(record)

    def _observe(self, record: RequestRecord) -> None:
        """Per-tenant anomaly check of a finished request; outliers become findings + alerts."""
        assert self.engine.anomaly is not None
        tokens = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
        anomalies = self.engine.anomaly.observe(
            tenant_id=record.tenant_id,
            cost_usd=record.cost_usd,
            tokens=tokens or None,
            latency_ms=record.latency_ms,
        )
        if not anomalies:
            return
        found = [a.to_finding() for a in anomalies]
        record.findings += stored_findings(found, "request", None)
        record.finding_types = sorted({*record.finding_types, *finding_types(found)})
        counter = self.engine.metrics.findings
        for f in found:
            self.engine.metrics.inc(counter, f.type, str(f.severity), "request")
        if self.engine.alerts is not None:
            for anomaly in anomalies:
                self.engine.alerts.submit(anomaly.to_alert(record.trace_id))

    def _store(self, record: RequestRecord) -> None:
        self.engine.store(record)

    def _expect_late(self, inspection: Inspection, direction: str, segments: list[Segment]) -> None:
        if inspection.late is not None:
            self.state.late.append((inspection.late, direction, segments))

    async def _record_after_late(
        self,
        record: RequestRecord,
        late: list[tuple[asyncio.Task[list[Finding]], str, list[Segment]]],
    ) -> None:
        """Add model findings that missed the verdict to the record, then store it."""
        for task, direction, segments in late:
            try:
                found = await asyncio.wait_for(task, self.engine.timeout)
            except Exception:
                log.warning("late ML result lost trace=%s", record.trace_id, exc_info=True)
                continue
            if found:
                self._count_findings(tuple(found), direction)
                record.findings += stored_findings(found, direction, segments)
                record.finding_types = sorted({*record.finding_types, *finding_types(found)})
        self._store(record)

    # -- response headers ------------------------------------------------------------------
    async def response_headers(self, msg: pb.HttpHeaders) -> pb.ProcessingResponse:
        """Pick the response body mode: BUFFERED JSON, FULL_DUPLEX SSE, or nothing to read."""
        st = self.state
        engine = self.engine
        headers = messages.header_map(msg, _RESPONSE_HEADERS)
        content_type = headers.get("content-type", "").lower()
        compressed = "content-encoding" in headers
        status = headers.get(":status", "")
        if st.record is not None and status.isdigit():
            st.record.status_code = int(status)
        if msg.end_of_stream or st.dialect is None:
            self._finish_record(None, _verdict_of(st))
            return messages.response_headers_response(None, (), _NO_BODIES)
        if "text/event-stream" in content_type and engine.streaming_enabled and not compressed:
            decoder = decoder_for_path(st.path)
            if decoder is not None:
                guard = StreamGuard(engine.config, engine.inspector.scanner)
                st.relay = SseRelay(
                    decoder,
                    guard,
                    engine.output_redactions,
                    drop_usage_events=st.injected_usage,
                    placeholders=self._placeholders(),
                )
                mode = messages.processing_mode(
                    request_body=Mode.NONE, response_body=Mode.FULL_DUPLEX_STREAMED
                )
                return messages.response_headers_response(None, (), mode)
        is_json = any(t in content_type for t in _JSON_TYPES)
        if is_json and not compressed and engine.output_enabled:
            return messages.response_headers_response(None, (), None)  # filter default: BUFFERED
        if engine.response_checks:
            if compressed:
                reason = "compressed"
            elif "text/event-stream" in content_type:
                reason = "event_stream"
            else:
                reason = "not_json"
            engine.metrics.inc(engine.metrics.unscanned, "response", reason)
        self._finish_record(None, _verdict_of(st))
        return messages.response_headers_response(None, (), _NO_BODIES)

    # -- response body ---------------------------------------------------------------------
    async def response_body(self, msg: pb.HttpBody) -> pb.ProcessingResponse:
        """Scan a buffered JSON response (redact secrets/PII, flag the rest), or relay SSE."""
        st = self.state
        if st.relay is not None:
            return self._relay(st.relay, msg)
        assert st.dialect is not None  # response bodies are only buffered for known dialects
        try:
            parsed = parse_json(msg.body)
            segments = st.dialect.extract_response(st.path, parsed)
        except DialectError:
            # Not ours to reject: an upstream error page or a shape we don't know.
            self.engine.metrics.inc(self.engine.metrics.unscanned, "response", "unparsed")
            self._finish_record(None, _verdict_of(st))
            return messages.response_body_response()
        engine = self.engine
        try:
            inspection = await engine.breaker.call(
                functools.partial(engine.inspector.response, segments, parsed, self._placeholders())
            )
        except CircuitOpen:
            return self._unanalysed("response_body")
        self._expect_late(inspection, "response", segments)
        decision = inspection.decision
        self._count_findings(decision.findings, "response")
        self.engine.metrics.inc(
            self.engine.metrics.responses, decision.verdict.value, st.dialect_label
        )
        flagged = decision.flagged
        if flagged and st.request_decision is not None:
            # Envoy already copied the request's verdict headers; keep both sides' types.
            flagged = st.request_decision.flagged + flagged
        st.usage = response_usage(parsed)
        st.completion_chars = sum(len(seg.text) for seg in segments)
        if st.record is not None:
            st.record.findings += stored_findings(decision.findings, "response", segments)
            st.record.response = self._capture(segments, decision.findings)
        st.response_finding_types = finding_types(decision.findings)
        self._finish_record(None, _verdict_of(st, decision))
        return messages.response_body_response(inspection.body, _flag_headers(flagged))

    def _capture(
        self, segments: Sequence[Segment], findings: Sequence[Finding], roles: bool = True
    ) -> str | None:
        """The text to store, as `storage.capture_content` says (PII and secrets tagged)."""
        mode = self.engine.config.storage.capture_content
        if mode == "none":
            return None
        lines = []
        for index, segment in enumerate(segments):
            text = segment.text
            if mode == "redacted":
                hidden = [
                    f
                    for f in findings
                    if f.category in _HIDDEN and (f.segment == index or f.segment is None)
                ]
                text = redact(text, hidden)
            lines.append(f"{segment.role}: {text}" if roles else text)
        return "\n".join(lines)

    def _final_analysis(self, relay: SseRelay) -> None:
        """Report what a full scan of the streamed text finds; the bytes are already decided."""
        st = self.state
        try:
            late = relay.guard.final()
        except Exception:
            # Only reporting depends on it: never let it cost the stream's last bytes.
            log.exception("final stream analysis failed trace=%s", st.trace_id)
            mode = self.engine.config.server.failure_mode
            self.engine.metrics.inc(self.engine.metrics.errors, "response_body", mode)
            return
        if late:
            st.stream_findings += late
            self._count_findings(tuple(late), "response")
            st.response_finding_types = sorted({*st.response_finding_types, *finding_types(late)})

    def _placeholders(self) -> Placeholders | None:
        """This request's placeholder table, if reversible redaction replaced anything."""
        table = self.state.placeholders
        return table if table is not None and table.values else None

    def _relay(self, relay: SseRelay, msg: pb.HttpBody) -> pb.ProcessingResponse:
        st = self.state
        metrics = self.engine.metrics
        out = relay.chunk(msg.body, msg.end_of_stream)
        if out.first_text and st.record is not None:
            ttft = time.perf_counter() - st.clock
            st.record.ttft_ms = ttft * 1000
            metrics.child(metrics.ttft_seconds, st.dialect_label).observe(ttft)
        st.usage = merge_usage(st.usage, out.usage)
        if out.verdict.findings:
            st.stream_findings += out.verdict.findings
            st.response_finding_types = sorted(
                {*st.response_finding_types, *finding_types(out.verdict.findings)}
            )
        if out.unparsed:
            metrics.child(metrics.unscanned, "response", "sse_unparsed").inc(out.unparsed)
        if out.redacted:
            metrics.child(metrics.stream_redactions, st.dialect_label).inc(out.redacted)
        if out.verdict.findings:
            self._count_findings(tuple(out.verdict.findings), "response")
        if out.end and not out.stopped and not relay.disabled:
            self._final_analysis(relay)
        if out.stopped or out.end:
            st.completion_chars = relay.position
            text = relay.guard.full_text or "".join(relay.guard.pieces)
            segment = Segment(Role.OUTPUT, text, ())
            ensemble = self.engine.inspector.ensemble
            if ensemble is not None and st.record is not None and not out.stopped:
                # The bytes are gone already: the models' view of the stream is for the record.
                late = ensemble.response_later([segment])
                if late is not None:
                    st.late.append((late, "response", [segment]))
            if st.record is not None:
                st.record.findings += stored_findings(tuple(st.stream_findings), "response", None)
                st.record.response = self._capture([segment], tuple(st.stream_findings), False)
            self._finish_record(None, "stopped" if out.stopped else _verdict_of(st))
        if out.stopped:
            st.finished = True
            metrics.inc(metrics.responses, "stopped", st.dialect_label)
            types = ",".join(finding_types(out.verdict.findings))
            log.info(
                "stream stopped trace=%s tenant=%s findings=%s", st.trace_id, st.tenant_id, types
            )
        elif out.end:
            metrics.inc(metrics.responses, "streamed", st.dialect_label)
        return messages.streamed_body_response(out.body, out.end)

    async def response_trailers(self, msg: pb.HttpTrailers) -> pb.ProcessingResponse:
        """Trailers arrive in FULL_DUPLEX_STREAMED mode; nothing to change in them."""
        return messages.response_trailers_response()

    # -- errors ----------------------------------------------------------------------------
    def _error(self, status: int, message: str, code: str | None = None) -> pb.ProcessingResponse:
        body = self.state.error_dialect.error_body(status, message, code)
        return messages.immediate_response(
            status, body, {TRACE_HEADER: self.state.trace_id}, details="extproc"
        )

    def denied(self, denial: Denial) -> pb.ProcessingResponse:
        """Refused before the upstream (blocked IP, rate limit, budget, token cap)."""
        st = self.state
        self.engine.metrics.inc(self.engine.metrics.requests, denial.reason, st.dialect_label)
        body = st.error_dialect.error_body(denial.status, denial.message, denial.code)
        headers = {TRACE_HEADER: st.trace_id, **denial.headers}
        return messages.immediate_response(denial.status, body, headers, details="extproc")

    def rejection(self, exc: Rejection) -> pb.ProcessingResponse:
        """The client-error answer for a request extproc refuses to analyse."""
        self.engine.metrics.inc(self.engine.metrics.bad_requests, exc.reason)
        self.engine.metrics.inc(self.engine.metrics.requests, "rejected", self.state.dialect_label)
        code = {413: "request_too_large", 415: "unsupported_content_encoding"}.get(
            exc.status, "invalid_request"
        )
        return self._error(exc.status, str(exc), code=code)

    def _unanalysed(self, phase: str, body: bytes | None = None) -> pb.ProcessingResponse:
        """The analysis breaker is open: pass the body unscanned, or refuse it (fail-closed)."""
        st = self.state
        metrics = self.engine.metrics
        counter = metrics.requests if phase == "request_body" else metrics.responses
        if self.engine.config.server.failure_mode == "closed":
            metrics.inc(counter, "analysis_unavailable", st.dialect_label)
            self._finish_record(503, "analysis_unavailable")
            return self._error(
                503,
                "Security analysis is temporarily unavailable; request refused (fail-closed).",
                code="analysis_unavailable",
            )
        direction = "request" if phase == "request_body" else "response"
        metrics.inc(metrics.unscanned, direction, "circuit_open")
        metrics.inc(counter, "unscanned", st.dialect_label)
        if phase == "request_body":
            return messages.request_body_response(body)
        self._finish_record(None, _verdict_of(st))
        return messages.response_body_response()

    def failure(self, phase: str, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        """Our own bug or a timeout: fail this one request per failure_mode, never the server."""
        mode = self.engine.config.server.failure_mode
        self.engine.metrics.inc(self.engine.metrics.errors, phase, mode)
        relay = self.state.relay
        if relay is not None and phase == "response_body":
            # Headers are already with the client: end or pass the stream, never reset it.
            body = request.response_body
            if mode == "closed":
                self.state.finished = True
                return messages.streamed_body_response(relay.fail_closed(), True)
            return messages.streamed_body_response(relay.fail_open(), body.end_of_stream)
        if mode == "closed":
            return self._error(
                500,
                "Security analysis failed; request refused (fail-closed).",
                code="analysis_failed",
            )
        return _continue(phase)

    def _count_findings(self, findings: tuple[Finding, ...], direction: str) -> None:
        """Count findings and hand them to the alert channels (which filter and dedupe)."""
        counter = self.engine.metrics.findings
        for f in findings:
            self.engine.metrics.inc(counter, f.type, str(f.severity), direction)
        if findings and self.engine.alerts is not None:
            st = self.state
            self.engine.alerts.findings(findings, tenant_id=st.tenant_id, trace_id=st.trace_id)


def _continue(phase: str) -> pb.ProcessingResponse:
    """A plain CONTINUE for the given phase (used when failing open)."""
    builders: dict[str, Callable[[], pb.ProcessingResponse]] = {
        "request_headers": messages.request_headers_response,
        "request_body": messages.request_body_response,
        "response_headers": messages.response_headers_response,
        "response_body": messages.response_body_response,
        "response_trailers": messages.response_trailers_response,
    }
    return builders[phase]()


_HIDDEN = (Category.PII, Category.SECRET)
# Decisions under which the upstream never saw the request: nothing was spent.
_NOT_FORWARDED = frozenset({Verdict.BLOCKED.value, "token_cap"})


def stored_findings(
    findings: Sequence[Finding], direction: str, segments: Sequence[Segment] | None
) -> list[StoredFinding]:
    out = []
    for f in findings:
        where = "stream"
        if segments is not None and f.segment is not None and f.segment < len(segments):
            where = format_path(segments[f.segment].path)
        out.append(
            StoredFinding(
                f.type,
                f.category.value,
                int(f.severity),
                f.confidence,
                f"{direction}:{where}:{f.start}-{f.end}",
                f.rule_id,
                f.detector,
            )
        )
    return out


def source_ip(request: pb.ProcessingRequest) -> str | None:
    """The client address Envoy reports (`request_attributes: [source.address]`), no port."""
    attributes = request.attributes.get("envoy.filters.http.ext_proc")
    if attributes is None or "source.address" not in attributes.fields:
        return None
    address = attributes.fields["source.address"].string_value
    if address.startswith("["):  # [::1]:port
        return address[1 : address.find("]")] or None
    host, sep, port = address.rpartition(":")
    return (host if sep and port.isdigit() else address) or None


def _verdict_of(st: StreamState, response: Decision | None = None) -> str:
    """The record's decision: the strongest of what happened to the request and response."""
    order = [v.value for v in Verdict]
    verdicts = [d.verdict.value for d in (st.request_decision, response) if d is not None]
    return max(verdicts, key=order.index, default=Verdict.ALLOWED.value)


_OPERATIONS = {
    Endpoint.CHAT_COMPLETIONS: "chat_completion",
    Endpoint.COMPLETIONS: "completion",
    Endpoint.RESPONSES: "response",
    Endpoint.MESSAGES: "chat_completion",
    Endpoint.COMPLETE: "completion",
}


def _flag_headers(flagged: tuple[Finding, ...]) -> dict[str, str]:
    if not flagged:
        return {}
    return {FLAGGED_HEADER: "true", FINDINGS_HEADER: ",".join(finding_types(flagged))}


def _too_large(size: int, limit: int) -> str:
    return f"Request body is {size} bytes; the limit is {limit} bytes."


def _raw_segments(body: bytes) -> list[Any]:
    from extproc.detect.findings import Role
    from extproc.dialects.base import Segment

    return [Segment(Role.USER, body.decode("utf-8", errors="replace"), ())]


_PHASES = ("request_headers", "request_body", "response_headers", "response_body")


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """grpc.aio servicer: dispatches each message of a stream to its phase method."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def Process(
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ProcessingResponse]:
        """Handle one HTTP request's stream of phase messages."""
        engine = self.engine
        metrics = engine.metrics
        processor = RequestProcessor(engine)
        handlers: dict[str, Callable[[Any], Awaitable[pb.ProcessingResponse]]] = {
            "request_headers": processor.request_headers,
            "request_body": processor.request_body,
            "response_headers": processor.response_headers,
            "response_body": processor.response_body,
            "response_trailers": processor.response_trailers,
        }
        metrics.active_streams.inc()
        try:
            async for request in request_iterator:
                phase = request.WhichOneof("request")
                handler = handlers.get(phase or "")
                if handler is None:
                    continue  # trailers etc. are not requested by our filter config
                started = time.perf_counter()
                if phase == "request_headers":
                    processor.state.source_ip = source_ip(request)
                try:
                    response = await handler(getattr(request, phase))
                except Rejection as exc:
                    response = processor.rejection(exc)
                except Exception:
                    log.exception(
                        "processing failed trace=%s phase=%s", processor.state.trace_id, phase
                    )
                    response = processor.failure(phase, request)
                metrics.child(metrics.phase_seconds, phase).observe(time.perf_counter() - started)
                yield response
                if response.HasField("immediate_response") or processor.state.finished:
                    return
        finally:
            metrics.active_streams.dec()
