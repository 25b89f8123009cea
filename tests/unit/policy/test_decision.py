"""Policy decisions from findings: thresholds, per-category actions, PII actions, responses."""

from __future__ import annotations

from extproc.config import Config, load_config
from extproc.detect.findings import Category, Finding, Severity
from extproc.policy.decision import Verdict, decide_request, decide_response


def finding(
    category: Category, severity: Severity, confidence: float = 0.9, type_: str | None = None
) -> Finding:
    return Finding(type_ or category.value, category, severity, confidence, 0, 4, "r1", segment=0)


def cfg(**settings: object) -> Config:
    return load_config(environ={}, overrides=settings.items())


INJECTION = finding(Category.PROMPT_INJECTION, Severity.HIGH)
EMAIL = finding(Category.PII, Severity.MEDIUM, type_="email")
ROLE = finding(Category.ROLE_INJECTION, Severity.MEDIUM)


def test_no_findings_allows() -> None:
    assert decide_request([], cfg()).verdict is Verdict.ALLOWED


def test_high_injection_blocks_with_configured_status() -> None:
    decision = decide_request([INJECTION], cfg(**{"enforcement.block_status_code": 451}))
    assert decision.verdict is Verdict.BLOCKED
    assert decision.status == 451
    assert decision.blocked == (INJECTION,)


def test_below_min_severity_or_confidence_only_logged() -> None:
    assert decide_request([ROLE], cfg()).verdict is Verdict.ALLOWED
    weak = finding(Category.PROMPT_INJECTION, Severity.HIGH, confidence=0.3)
    decision = decide_request([weak], cfg())
    assert decision.verdict is Verdict.ALLOWED
    assert decision.findings == (weak,)  # still reported
    assert decide_request([ROLE], cfg(**{"enforcement.min_severity": "medium"})).blocked


def test_modes_and_category_overrides() -> None:
    assert decide_request([INJECTION], cfg(**{"enforcement.mode": "flag"})).verdict is (
        Verdict.FLAGGED
    )
    assert decide_request([INJECTION], cfg(**{"enforcement.mode": "log"})).verdict is (
        Verdict.ALLOWED
    )
    per_category = cfg(
        **{"enforcement.categories": [{"finding_type": "prompt_injection", "action": "flag"}]}
    )
    jailbreak = finding(Category.JAILBREAK, Severity.CRITICAL)
    decision = decide_request([INJECTION, jailbreak], per_category)
    assert decision.blocked == (jailbreak,)
    assert decision.flagged == (INJECTION,)


def test_pii_actions() -> None:
    assert decide_request([EMAIL], cfg()).verdict is Verdict.ALLOWED
    redact = decide_request([EMAIL], cfg(**{"pii.action": "alert_and_redact"}))
    assert redact.verdict is Verdict.REDACTED
    assert redact.findings == (EMAIL,)
    silent = decide_request([EMAIL], cfg(**{"pii.action": "redact_silent"}))
    assert silent.redact == (EMAIL,)
    assert silent.findings == ()


def test_block_wins_over_redaction() -> None:
    decision = decide_request([EMAIL, INJECTION], cfg(**{"pii.action": "alert_and_redact"}))
    assert decision.verdict is Verdict.BLOCKED
    assert decision.redact == ()


def test_response_secrets_redacted_pii_flagged_by_default() -> None:
    secret = finding(Category.SECRET, Severity.CRITICAL, type_="aws_access_key")
    decision = decide_response([secret, EMAIL], cfg())
    assert decision.redact == (secret,)
    assert decision.flagged == (EMAIL,)
    assert decision.blocked == ()
    keep = decide_response([secret], cfg(**{"output_safety.redact_secrets": False}))
    assert keep.flagged == (secret,)


def test_a_model_finding_counts_once_past_its_own_threshold() -> None:
    from extproc.config import load_config
    from extproc.detect.findings import Category, Finding, Severity
    from extproc.policy.decision import decide_request

    config = load_config(environ={})
    ml = Finding("jailbreak", Category.JAILBREAK, Severity.HIGH, 0.42, 0, 9, "ml.x", "ml:x")
    rule = Finding("jailbreak", Category.JAILBREAK, Severity.HIGH, 0.42, 0, 9, "jb.1")
    assert decide_request([ml], config).blocked == (ml,)
    assert decide_request([rule], config).blocked == ()  # a rule still needs min_confidence
