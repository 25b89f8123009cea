"""Writing redacted text back through a segment's path changes only that string."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from extproc.dialects import Segment, dialect_for_path, format_path, get_at, set_at

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("*.json"))


def _extract(fixture: dict[str, Any], body: Any) -> list[Segment]:
    dialect = dialect_for_path(fixture["path"])
    assert dialect is not None
    if fixture["direction"] == "request":
        return dialect.extract_request(fixture["path"], body)
    return dialect.extract_response(fixture["path"], body)


@pytest.mark.parametrize("fixture_path", FIXTURES, ids=lambda p: p.stem)
def test_redact_each_segment_round_trip(fixture_path: Path) -> None:
    fixture = json.loads(fixture_path.read_text(encoding="utf-8"))
    original = _extract(fixture, fixture["body"])
    for index, segment in enumerate(original):
        body = copy.deepcopy(fixture["body"])
        set_at(body, segment.path, "[REDACTED]")
        again = _extract(fixture, body)
        assert len(again) == len(original)
        for j, (before, after) in enumerate(zip(original, again, strict=True)):
            assert after.path == before.path
            assert after.text == ("[REDACTED]" if j == index else before.text)


def test_set_at_list_and_dict() -> None:
    body: Any = {"a": [{"b": "x"}, "y"]}
    set_at(body, ("a", 0, "b"), "X")
    set_at(body, ("a", 1), "Y")
    assert body == {"a": [{"b": "X"}, "Y"]}


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ((), ValueError),
        (("a", "missing"), TypeError),
        (("nope",), KeyError),
        (("a", 9), IndexError),
    ],
)
def test_set_at_refuses_stale_paths(path: tuple[str | int, ...], error: type[Exception]) -> None:
    body: Any = {"a": ["x"]}
    with pytest.raises(error):
        set_at(body, path, "v")
    assert body == {"a": ["x"]}


def test_format_path() -> None:
    assert format_path(()) == "body"
    assert format_path(("messages", 2, "content")) == "messages[2].content"
    assert format_path(("input", 0, "output", 1, "text")) == "input[0].output[1].text"
    assert get_at({"a": ["b"]}, ("a", 0)) == "b"
