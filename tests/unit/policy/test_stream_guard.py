"""Incremental stream checks: matches split across chunks, reported once, stop threshold."""

from __future__ import annotations

import pytest

from extproc.config import Config, load_config
from extproc.detect.scanner import Scanner
from extproc.policy.stream_guard import StreamGuard

KEY = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" * 2


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner.load()


def guard(scanner: Scanner, **settings: object) -> StreamGuard:
    config: Config = load_config(environ={}, overrides=settings.items())
    return StreamGuard(config, scanner)


def test_match_split_across_chunks_stops_at_its_start(scanner: Scanner) -> None:
    g = guard(scanner)
    assert g.feed("Here is the key: ").stop_at is None
    assert g.feed(KEY[:10]).stop_at is None
    verdict = g.feed(KEY[10:] + " and more")
    assert verdict.stop_at == len("Here is the key: ")
    assert [f.type for f in verdict.findings] == ["openai_api_key"]


def test_findings_in_the_overlap_are_not_reported_twice(scanner: Scanner) -> None:
    g = guard(scanner, **{"streaming_analysis.early_stop_on_critical": False})
    first = g.feed(f"mail me at jane@corp.example or {KEY}")
    assert {f.type for f in first.findings} == {"email", "openai_api_key"}
    assert first.stop_at is None  # early stop switched off
    assert g.feed(" thanks").findings == []


def test_below_stop_severity_only_reported(scanner: Scanner) -> None:
    g = guard(scanner)  # default: stop at critical
    verdict = g.feed("call 555-123-4567 please")
    assert [f.type for f in verdict.findings] == ["phone_number"]
    assert verdict.stop_at is None
    high = guard(scanner, **{"streaming_analysis.early_stop_min_severity": "medium"})
    assert high.feed("call 555-123-4567 please").stop_at == len("call ")


def test_offsets_follow_the_whole_stream(scanner: Scanner) -> None:
    g = guard(scanner, **{"streaming_analysis.overlap_chars": 64})
    g.feed("x" * 1000)
    verdict = g.feed(f" {KEY}")
    assert verdict.stop_at == 1001


def test_final_analysis_finds_what_the_overlap_missed(scanner: Scanner) -> None:
    g = guard(scanner, **{"streaming_analysis.overlap_chars": 64})
    header = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    payload = "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    g.feed(f"token: {header}.{payload}")
    assert g.feed(".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c done").findings == []
    late = g.final()
    assert [f.type for f in late] == ["jwt"]
    assert g.final() == []
