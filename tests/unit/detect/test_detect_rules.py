"""Rule pack loading: the schema, defaults and the errors an operator sees."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from extproc.detect.findings import Category, Role, Severity
from extproc.detect.pii import ALL_SUPPRESSIONS
from extproc.detect.rules import INPUT_ROLES, load_rules
from extproc.detect.scanner import RulePackError, Scanner


def _pack(tmp_path: Path, body: str, name: str = "pack.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


GOOD_RULE = """
rules:
  - id: t.hello
    category: prompt_injection
    pattern: 'hello\\s+world'
    severity: high
    confidence: 0.9
    description: test rule
"""


def test_bundled_packs_cover_every_category(scanner: Scanner) -> None:
    counts = Counter(rule.category for rule in scanner.rules)
    for category in Category:
        if category in (Category.TOXICITY, Category.ANOMALY):
            continue  # a model's and the statistics' categories: not something regex judges
        assert counts[category] > 0, category
    assert scanner.rule_count == len(scanner.rules) >= 100


def test_bundled_rule_ids_are_unique(scanner: Scanner) -> None:
    ids = [rule.id for rule in scanner.rules]
    assert len(ids) == len(set(ids))


def test_pii_types_match_the_configuration_guide(scanner: Scanner) -> None:
    expected = {
        "email": 0.90, "phone_number": 0.85, "ssn": 0.95, "credit_card": 0.90, "uk_nin": 0.90,
        "iban": 0.85, "eu_passport_de": 0.60, "eu_passport_fr": 0.65, "eu_passport_it": 0.60,
        "eu_passport_es": 0.60, "eu_passport_nl": 0.60, "intl_phone": 0.80, "nhs_number": 0.70,
        "canadian_sin": 0.80, "australian_tfn": 0.70,
    }  # fmt: skip
    found = {r.type: r.confidence for r in scanner.rules if r.category is Category.PII}
    assert found == expected


def test_load_a_single_pack(tmp_path: Path) -> None:
    scanner = Scanner.load([_pack(tmp_path, GOOD_RULE)], cache_dir=None)
    assert scanner.rule_count == 1
    [finding] = scanner.scan("say hello   world", Role.USER)
    assert (finding.rule_id, finding.start, finding.end) == ("t.hello", 4, 17)
    assert finding.type == "prompt_injection"  # type defaults to the category


def test_defaults_apply_and_rules_override_them(tmp_path: Path) -> None:
    body = """
defaults:
  category: pii
  severity: medium
  confidence: 0.5
  roles: [output]
rules:
  - {id: t.a, pattern: 'a', description: a}
  - {id: t.b, pattern: 'b', description: b, severity: low, roles: [user], suppress: []}
"""
    first, second = load_rules([_pack(tmp_path, body)])
    assert first.category is Category.PII and first.severity is Severity.MEDIUM
    assert first.applies_to(Role.OUTPUT) and not first.applies_to(Role.USER)
    assert first.suppress == ALL_SUPPRESSIONS  # pii rules suppress by default
    assert second.severity is Severity.LOW and second.applies_to(Role.USER)
    assert second.suppress == frozenset()


def test_default_roles_are_the_input_roles(tmp_path: Path) -> None:
    [rule] = load_rules([_pack(tmp_path, GOOD_RULE)])
    assert all(rule.applies_to(role) for role in INPUT_ROLES)
    assert not rule.applies_to(Role.OUTPUT)


@pytest.mark.parametrize(
    ("replacement", "message"),
    [
        ("    colour: red\n", "colour"),  # unknown key
        ("    category: nonsense\n", "category"),
        ("    validator: crc32\n", "unknown validator"),
        ("    roles: [wizard]\n", "roles"),
        ("    confidence: 1.5\n", "confidence"),
        ("    suppress: [url]\n", "only allowed on pii"),
    ],
)
def test_bad_rule_is_reported_with_file_and_rule_id(
    tmp_path: Path, replacement: str, message: str
) -> None:
    key = replacement.split(":")[0].strip()
    lines = [line for line in GOOD_RULE.splitlines(keepends=True) if f"{key}:" not in line]
    path = _pack(tmp_path, "".join(lines) + replacement)
    with pytest.raises(RulePackError) as info:
        Scanner.load([path], cache_dir=None)
    assert "t.hello" in str(info.value)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_regex_that_does_not_compile_names_the_rule(tmp_path: Path) -> None:
    body = (
        GOOD_RULE
        + """
  - id: t.broken
    category: jailbreak
    pattern: '(?<=x)y'
    severity: high
    confidence: 0.9
    description: lookbehind is not supported by hyperscan
"""
    )
    with pytest.raises(RulePackError, match=r"t\.broken.*does not compile"):
        Scanner.load([_pack(tmp_path, body)], cache_dir=None)


def test_unbalanced_regex_names_the_rule(tmp_path: Path) -> None:
    body = GOOD_RULE.replace("hello\\s+world", "hello(world")
    with pytest.raises(RulePackError, match=r"t\.hello"):
        Scanner.load([_pack(tmp_path, body)], cache_dir=None)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = _pack(tmp_path, "rules: [unclosed\n")
    with pytest.raises(RulePackError, match="invalid YAML"):
        Scanner.load([path], cache_dir=None)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(RulePackError, match="mapping"):
        Scanner.load([_pack(tmp_path, "- just a list\n")], cache_dir=None)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    with pytest.raises(RulePackError, match="extra"):
        Scanner.load([_pack(tmp_path, GOOD_RULE + "extra: 1\n")], cache_dir=None)


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    first = _pack(tmp_path, GOOD_RULE, "a.yaml")
    second = _pack(tmp_path, GOOD_RULE, "b.yaml")
    with pytest.raises(RulePackError, match="duplicate id"):
        Scanner.load([first, second], cache_dir=None)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RulePackError, match="cannot read"):
        Scanner.load([tmp_path / "absent.yaml"], cache_dir=None)


def test_compiled_database_is_cached_and_reused(tmp_path: Path) -> None:
    path = _pack(tmp_path, GOOD_RULE)
    cache = tmp_path / "cache"
    Scanner.load([path], cache_dir=cache)
    assert len(list(cache.glob("hs-*.db"))) == 1
    reloaded = Scanner.load([path], cache_dir=cache)
    assert reloaded.scan("hello world", Role.USER)


def test_corrupt_cache_is_ignored(tmp_path: Path) -> None:
    path = _pack(tmp_path, GOOD_RULE)
    cache = tmp_path / "cache"
    Scanner.load([path], cache_dir=cache)
    for entry in cache.glob("hs-*.db"):
        entry.write_bytes(b"not a database")
    assert Scanner.load([path], cache_dir=cache).scan("hello world", Role.USER)
