"""PII: the fifteen types of the guide, checksums, suppression and redaction."""

from __future__ import annotations

import pytest

from extproc.detect.findings import Category, Finding, Role, Severity
from extproc.detect.redact import redact
from extproc.detect.scanner import Scanner


def _pii(scanner: Scanner, text: str, role: Role = Role.USER) -> list[tuple[str, str]]:
    return [
        (f.type, text[f.start : f.end])
        for f in scanner.scan(text, role)
        if f.category is Category.PII
    ]


@pytest.mark.parametrize(
    ("pii_type", "value"),
    [
        ("email", "user@example.com"),
        ("email", "john.smith+tag@mail.example.co.uk"),
        ("phone_number", "555-123-4567"),
        ("phone_number", "(555) 123-4567"),
        ("phone_number", "555.123.4567"),
        ("ssn", "456-78-9012"),
        ("credit_card", "4111 1111 1111 1111"),
        ("credit_card", "4111-1111-1111-1111"),
        ("credit_card", "5500005555555559"),
        ("credit_card", "3782 822463 10005"),
        ("uk_nin", "AB 12 34 56 C"),
        ("uk_nin", "AB123456C"),
        ("iban", "DE89 3704 0044 0532 0130 00"),
        ("iban", "GB82WEST12345698765432"),
        ("eu_passport_de", "C01X00T2Z"),
        ("eu_passport_fr", "12AB34567"),
        ("eu_passport_it", "AA1234567"),
        ("eu_passport_es", "ABC123456"),
        ("eu_passport_nl", "NX1A2B3C4"),
        ("intl_phone", "+44 20 7946 0958"),
        ("intl_phone", "+33 1 42 68 53 00"),
        ("nhs_number", "943 476 5919"),
        ("canadian_sin", "046-454-286"),
        ("australian_tfn", "865 414 002"),
    ],
)
def test_each_pii_type_is_detected(scanner: Scanner, pii_type: str, value: str) -> None:
    text = f"Details: {value} (please keep private)"
    assert (pii_type, value) in _pii(scanner, text)


@pytest.mark.parametrize(
    "value",
    [
        "4111 1111 1111 1112",  # Luhn fails
        "1234 5678 9012 3457",
        "DE89 3704 0044 0532 0130 01",  # mod-97 fails
        "DE89 3704 0044 0532 0130",  # wrong length for DE
        "046-454-287",  # SIN Luhn fails
        "666-12-3456",  # SSN area 666
        "912-34-5678",  # SSN area 9xx
        "456-00-9012",  # SSN group 00
        "GB 12 34 56 C",  # NINO prefix never issued
    ],
)
def test_invalid_checksums_are_not_reported(scanner: Scanner, value: str) -> None:
    assert _pii(scanner, f"number {value} here") == []


def test_nine_digits_valid_for_sin_and_tfn_are_reported_once(scanner: Scanner) -> None:
    # 123 456 782 passes both Luhn and the TFN checksum: the more confident type is kept.
    assert _pii(scanner, "id 123 456 782") == [("canadian_sin", "123 456 782")]


def test_invalid_nhs_number_is_not_an_nhs_number(scanner: Scanner) -> None:
    assert "nhs_number" not in {t for t, _ in _pii(scanner, "NHS 943 476 5918")}


def test_severity_and_confidence_follow_the_guide(scanner: Scanner) -> None:
    [finding] = scanner.scan("mail me at user@example.com", Role.USER)
    assert finding.severity is Severity.MEDIUM
    assert finding.confidence == pytest.approx(0.90)
    assert finding.rule_id == "pii.email"


def test_card_in_code_fence_is_suppressed(scanner: Scanner) -> None:
    text = "Test data:\n```\ncard = '4111 1111 1111 1111'\n```\nthanks"
    assert _pii(scanner, text) == []


def test_card_after_closed_fence_is_detected(scanner: Scanner) -> None:
    text = "```\nx = 1\n```\nmy card is 4111 1111 1111 1111"
    assert _pii(scanner, text) == [("credit_card", "4111 1111 1111 1111")]


def test_unclosed_fence_runs_to_end(scanner: Scanner) -> None:
    assert _pii(scanner, "```python\nemail = 'user@example.com'\n") == []


def test_indented_code_line_is_suppressed(scanner: Scanner) -> None:
    text = "Example:\n\n    SSN = '456-78-9012'\n\tphone = '555-123-4567'\nreal: 456-78-9012"
    assert _pii(scanner, text) == [("ssn", "456-78-9012")]


def test_match_inside_url_is_suppressed(scanner: Scanner) -> None:
    text = "see https://example.com/users/456-78-9012/profile and www.example.com/555-123-4567"
    assert _pii(scanner, text) == []


def test_placeholders_are_suppressed(scanner: Scanner) -> None:
    text = "SSN format 123-45-6789, card 0000 0000 0000 0000, phone 555-555-5555"
    assert _pii(scanner, text) == []


def test_example_domain_email_is_still_detected(scanner: Scanner) -> None:
    assert _pii(scanner, "Contact john@example.com") == [("email", "john@example.com")]


def test_suppression_never_applies_to_secrets(scanner: Scanner) -> None:
    text = "```\naws_key = 'AKIAIOSFODNN7EXAMPLE'\n```"
    assert [f.type for f in scanner.scan(text, Role.USER)] == ["aws_access_key"]


def test_pii_is_scanned_in_model_output(scanner: Scanner) -> None:
    assert _pii(scanner, "Her SSN is 456-78-9012.", Role.OUTPUT) == [("ssn", "456-78-9012")]


def test_guide_redaction_example(scanner: Scanner) -> None:
    text = "Contact John at john@example.com or call 555-123-4567"
    findings = scanner.scan(text, Role.USER)
    assert redact(text, findings) == "Contact John at [PII:EMAIL] or call [PII:PHONE_NUMBER]"


def test_redaction_tags(scanner: Scanner) -> None:
    text = "card 4111 1111 1111 1111, key AKIAIOSFODNN7EXAMPLE"
    assert redact(text, scanner.scan(text, Role.USER)) == (
        "card [PII:CREDIT_CARD], key [SECRET:AWS_ACCESS_KEY]"
    )


def test_one_span_is_reported_as_one_pii_type(scanner: Scanner) -> None:
    # 943 476 5919 also has a US phone shape: the checksum-validated reading wins.
    assert _pii(scanner, "NHS 943 476 5919") == [("nhs_number", "943 476 5919")]
    # An international number also contains a US-shaped tail: the longer reading wins.
    assert _pii(scanner, "call +1 555 123 4567") == [("intl_phone", "+1 555 123 4567")]


def test_iban_followed_by_more_capitals_keeps_the_valid_prefix(scanner: Scanner) -> None:
    assert _pii(scanner, "IBAN DE89 3704 0044 0532 0130 00 AB12 thanks") == [
        ("iban", "DE89 3704 0044 0532 0130 00")
    ]


def test_redact_directly() -> None:
    text = "abcdefghij"
    findings = [
        Finding("email", Category.PII, Severity.MEDIUM, 0.9, 2, 5, "r1"),
        Finding("phone_number", Category.PII, Severity.MEDIUM, 0.9, 4, 7, "r2"),  # overlaps r1
        Finding("aws_access_key", Category.SECRET, Severity.HIGH, 0.9, 8, 10, "r3"),
        Finding("jailbreak", Category.JAILBREAK, Severity.HIGH, 0.9, 0, 0, "r4"),  # empty
    ]
    assert redact(text, findings) == "ab[PII:EMAIL]h[SECRET:AWS_ACCESS_KEY]"
    assert redact(text, []) == text
    assert redact("", findings) == ""


def test_redact_clamps_out_of_range_offsets() -> None:
    finding = Finding("email", Category.PII, Severity.MEDIUM, 0.9, 5, 99, "r")
    assert redact("0123456789", [finding]) == "01234[PII:EMAIL]"
