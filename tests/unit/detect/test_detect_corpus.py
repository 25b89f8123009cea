"""The benign look-alike and attack lists in data/: no blocking findings on honest text."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from extproc.detect.findings import Category, Role, Severity
from extproc.detect.scanner import Scanner

from .conftest import DATA

# What "block-worthy" means for the honest-user check: a HIGH or CRITICAL attack finding.
ATTACK_CATEGORIES = frozenset(
    {
        Category.PROMPT_INJECTION,
        Category.JAILBREAK,
        Category.ROLE_INJECTION,
        Category.DELIMITER_INJECTION,
        Category.ENCODING_ATTACK,
    }
)


def _load(name: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = yaml.safe_load((DATA / name).read_text(encoding="utf-8"))
    return entries


BENIGN = _load("benign.yaml")
ATTACKS = _load("attacks.yaml")


def test_lists_are_large_enough() -> None:
    assert len(BENIGN) >= 60
    assert len(ATTACKS) >= 40


@pytest.mark.parametrize("entry", BENIGN, ids=[e["text"][:40] for e in BENIGN])
def test_benign_prompt_is_not_blocked(scanner: Scanner, entry: dict[str, Any]) -> None:
    findings = scanner.scan(entry["text"], Role(entry.get("role", "user")))
    blocking = [
        (f.rule_id, entry["text"][f.start : f.end])
        for f in findings
        if f.category in ATTACK_CATEGORIES and f.severity >= Severity.HIGH
    ]
    assert blocking == []


@pytest.mark.parametrize("entry", ATTACKS, ids=[e["text"][:40] for e in ATTACKS])
def test_attack_is_caught(scanner: Scanner, entry: dict[str, Any]) -> None:
    findings = scanner.scan(entry["text"], Role(entry.get("role", "user")))
    expected = Category(entry["category"])
    assert any(f.category is expected and f.severity >= Severity.HIGH for f in findings), [
        (f.rule_id, str(f.severity)) for f in findings
    ]
