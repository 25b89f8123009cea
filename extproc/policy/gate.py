"""What admission decides on: the caller, a denial, ext_authz's input and answer.

Plain data shared by the Gate (policy/admission.py) and both gRPC edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, as far as request headers and Envoy's attributes tell."""

    tenant_id: str | None
    agent_id: str | None
    source_ip: str | None
    path: str = ""


@dataclass(frozen=True, slots=True)
class Denial:
    """A refusal answered by extproc itself, in the client's dialect."""

    status: int  # 403 blocked IP, 429 rate/budget, 413 token cap
    message: str
    code: str  # the dialect error body's code, e.g. "rate_limit_exceeded"
    reason: str  # metric label: ip_blocked | rate_limited | budget_exceeded | token_cap
    headers: dict[str, str] = field(default_factory=dict)  # e.g. {"retry-after": "3"}


@dataclass(frozen=True, slots=True)
class AuthzInput:
    """What an ext_authz Check carries about the request."""

    path: str
    method: str
    headers: dict[str, str]  # lower-case names (first value)
    source_ip: str | None  # peer address without port
    body: bytes | None  # None when Envoy sent no body
    body_truncated: bool  # Envoy sent only part of the body (allow_partial_message)


@dataclass(frozen=True, slots=True)
class Admission:
    """The ext_authz answer: a denial, or headers to change on the upstream request."""

    denial: Denial | None
    headers: dict[str, str] = field(default_factory=dict)  # added upstream on allow
    remove_headers: tuple[str, ...] = ()  # removed upstream on allow
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """The token-cap verdict on a parsed request body."""

    denial: Denial | None
    prompt_tokens: int | None = None
    clamped: bool = False  # the body's completion limit was lowered (re-serialise it)
