"""Reversible redaction: numbering, restoring, unfinished placeholders."""

from __future__ import annotations

from extproc.detect.findings import Category, Finding, Severity
from extproc.policy.placeholders import Placeholders


def email(text: str, value: str) -> Finding:
    start = text.index(value)
    return Finding("email", Category.PII, Severity.MEDIUM, 0.9, start, start + len(value), "r")


def test_same_value_same_number_and_restore() -> None:
    text = "a@x.io b@y.io a@x.io"
    table = Placeholders()
    first = table.tag(email(text, "a@x.io"), text)
    second = table.tag(email(text, "b@y.io"), text)
    assert (first, second) == ("[PII:EMAIL_1]", "[PII:EMAIL_2]")
    assert table.tag(email(text, "a@x.io"), text) == first
    assert table.restore("to [PII:EMAIL_2] and [PII:EMAIL_1], not [PII:EMAIL_9]") == (
        "to b@y.io and a@x.io, not [PII:EMAIL_9]"
    )


def test_open_tail() -> None:
    assert Placeholders.open_tail("write to [PII:EMA") == len("[PII:EMA")
    assert Placeholders.open_tail("write to [") == 1
    assert Placeholders.open_tail("done [PII:EMAIL_1]") == 0
    assert Placeholders.open_tail("a list [1, 2]") == 0
