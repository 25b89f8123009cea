"""Every recorded request/response fixture extracts exactly the expected segments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extproc.detect.findings import Role
from extproc.dialects import Segment, dialect_for_path, get_at

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _expected(fixture: dict[str, Any]) -> list[Segment]:
    return [Segment(Role(e["role"]), e["text"], tuple(e["path"])) for e in fixture["expect"]]


def test_fixtures_exist_for_both_dialects_and_directions() -> None:
    names = {p.name for p in FIXTURES}
    for prefix in ("openai_", "anthropic_"):
        for suffix in (".request.json", ".response.json"):
            assert any(n.startswith(prefix) and n.endswith(suffix) for n in names)


@pytest.mark.parametrize("fixture_path", FIXTURES, ids=lambda p: p.stem)
def test_fixture(fixture_path: Path) -> None:
    fixture = _load(fixture_path)
    dialect = dialect_for_path(fixture["path"])
    assert dialect is not None, f"no dialect for {fixture['path']}"
    # The file name says which dialect must have been routed to.
    assert fixture_path.name.startswith(dialect.name + "_")
    if fixture["direction"] == "request":
        got = dialect.extract_request(fixture["path"], fixture["body"])
    else:
        got = dialect.extract_response(fixture["path"], fixture["body"])
    assert got == _expected(fixture)
    # Paths must address the exact string, since redaction writes back through them.
    for segment in got:
        assert get_at(fixture["body"], segment.path) == segment.text
