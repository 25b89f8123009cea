"""Turn findings into a Decision: block, redact, flag or allow."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from extproc.config import Config, EnforcementConfig
from extproc.detect.findings import Category, Finding


class Verdict(StrEnum):
    """What happened to a request or response; also the `decision` metric label."""

    ALLOWED = "allowed"
    FLAGGED = "flagged"
    REDACTED = "redacted"
    BLOCKED = "blocked"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of policy for one message, with the findings behind it."""

    findings: tuple[Finding, ...] = ()  # everything reported (after redact_silent drops PII)
    blocked: tuple[Finding, ...] = ()
    flagged: tuple[Finding, ...] = ()
    redact: tuple[Finding, ...] = ()  # spans to replace with tags
    status: int = 200
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def verdict(self) -> Verdict:
        """The strongest action taken."""
        if self.blocked:
            return Verdict.BLOCKED
        if self.redact:
            return Verdict.REDACTED
        if self.flagged:
            return Verdict.FLAGGED
        return Verdict.ALLOWED


ALLOW = Decision()


def finding_types(findings: Iterable[Finding]) -> list[str]:
    """Sorted unique finding types, as named in headers and error messages."""
    return sorted({f.type for f in findings})


def _redacts_pii(config: Config) -> bool:
    return config.pii.action in ("alert_and_redact", "redact_silent")


def _action_for(finding: Finding, enforcement: EnforcementConfig) -> str:
    for rule in enforcement.categories:
        if rule.finding_type in (finding.type, finding.category.value):
            return rule.action
    return enforcement.mode


def _meets_threshold(finding: Finding, enforcement: EnforcementConfig) -> bool:
    if finding.severity < enforcement.min_severity:
        return False
    # A model finding already passed its own threshold (security_analysis.*_threshold); its
    # confidence is the model's raw score, on another scale than a rule's declared confidence.
    return finding.detector.startswith("ml:") or finding.confidence >= enforcement.min_confidence


def decide_request(findings: Sequence[Finding], config: Config) -> Decision:
    """Decide what to do with a request body given its findings."""
    if not findings:
        return ALLOW
    enforcement = config.enforcement
    redact = (
        tuple(f for f in findings if f.category is Category.PII) if _redacts_pii(config) else ()
    )
    reported = findings
    if config.pii.action == "redact_silent":
        reported = [f for f in findings if f.category is not Category.PII]
    redacted = set(redact)
    blocked: list[Finding] = []
    flagged: list[Finding] = []
    for finding in reported:
        if finding in redacted or not _meets_threshold(finding, enforcement):
            continue
        action = _action_for(finding, enforcement)
        if action == "block":
            blocked.append(finding)
        elif action == "flag":
            flagged.append(finding)
    return Decision(
        findings=tuple(reported),
        blocked=tuple(blocked),
        flagged=tuple(flagged),
        redact=() if blocked else redact,
        status=enforcement.block_status_code if blocked else 200,
    )


def redacts_output(finding: Finding, config: Config) -> bool:
    """Whether this finding's text is replaced by its tag in what the model returns."""
    if finding.category is Category.PII:
        return _redacts_pii(config)
    return finding.category is Category.SECRET and config.output_safety.redact_secrets


def output_redaction_enabled(config: Config) -> bool:
    """Whether any finding type is redacted in responses (streams then hold back a tail)."""
    return _redacts_pii(config) or config.output_safety.redact_secrets


# What a model says is worth a header even below the blocking thresholds.
_ALWAYS_FLAGGED_IN_OUTPUT = (Category.PII, Category.SECRET, Category.TOXICITY)


def decide_response(findings: Sequence[Finding], config: Config) -> Decision:
    """Decide what to do with a buffered response: redact secrets/PII, flag the rest.

    Responses are never blocked here: the model has already run and been paid for, and a
    redacted answer is more useful to the client than an error.
    """
    if not findings:
        return ALLOW
    redact: list[Finding] = []
    flagged: list[Finding] = []
    reported = list(findings)
    if config.pii.action == "redact_silent":
        reported = [f for f in findings if f.category is not Category.PII]
        redact.extend(f for f in findings if f.category is Category.PII)
    for finding in reported:
        if redacts_output(finding, config):
            redact.append(finding)
        elif finding.category in _ALWAYS_FLAGGED_IN_OUTPUT or _meets_threshold(
            finding, config.enforcement
        ):
            flagged.append(finding)
    return Decision(findings=tuple(reported), flagged=tuple(flagged), redact=tuple(redact))
