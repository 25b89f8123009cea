"""Admission before the upstream: IP blocks, rate limits, budgets and token caps.

One Gate serves both edges (ext_proc request headers/body and ext_authz Check), so a
request is judged the same way whichever filter Envoy runs.
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
