"""The one hyperscan database: every pattern compiled together, one pass over the text.

hyperscan reports each (pattern, end offset) once with, under HS_FLAG_SOM_LEFTMOST, the
leftmost start of a match ending there. Scratch space is per thread (a clone each), which is
what makes one database safe to scan from many threads at once.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hyperscan

from extproc.detect.errors import ScanError

# Match offsets are byte offsets into the UTF-8 encoding of the text.
RawMatch = tuple[int, int, int]  # (pattern id, start, end)


@dataclass(frozen=True, slots=True)
class Expression:
    """One pattern to compile: its id is its index in the scanner's tables."""

    pattern: str
    flags: int


class CompileError(Exception):
    """One or more expressions did not compile; `index` is the first culprit, when known."""

    def __init__(self, message: str, index: int | None) -> None:
        super().__init__(message)
        self.index = index


def _collect(pattern_id: int, start: int, end: int, _flags: int, hits: list[RawMatch]) -> None:
    # Kept trivial on purpose: it runs once per match, inside hyperscan's scan loop.
    hits.append((pattern_id, start, end))


class Engine:
    """A compiled block-mode database plus per-thread scratch space."""

    def __init__(self, expressions: Sequence[Expression], cache_dir: Path | None = None) -> None:
        self._database = _cached_compile(expressions, cache_dir)
        self._prototype = hyperscan.Scratch(self._database)
        self._local = threading.local()
        self._clone_lock = threading.Lock()

    def _scratch(self) -> Any:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            # Cloning reads the prototype; two threads' first scans may race on it.
            with self._clone_lock:
                scratch = self._prototype.clone()
            self._local.scratch = scratch
        return scratch

    def scan(self, data: bytes) -> list[RawMatch]:
        """All matches in `data`, in the order hyperscan reports them (by end offset)."""
        hits: list[RawMatch] = []
        if not data:
            return hits
        try:
            self._database.scan(
                data, match_event_handler=_collect, context=hits, scratch=self._scratch()
            )
        except hyperscan.error as exc:
            raise ScanError(f"hyperscan scan failed: {exc}") from exc
        return hits


def _compile_database(expressions: Sequence[Expression]) -> Any:
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    database.compile(
        expressions=[e.pattern.encode("utf-8") for e in expressions],
        ids=list(range(len(expressions))),
        elements=len(expressions),
        flags=[e.flags for e in expressions],
    )
    return database


def _compile(expressions: Sequence[Expression]) -> Any:
    """Compile all expressions; on failure find the first that fails on its own."""
    try:
        return _compile_database(expressions)
    except hyperscan.error as exc:
        # hyperscan's multi-compile error doesn't say which expression broke, and the
        # message is what an operator needs next to the rule id: compile each to find out.
        for index, expression in enumerate(expressions):
            try:
                _compile_database([expression])
            except hyperscan.error as single:
                raise CompileError(str(single), index) from None
        raise CompileError(str(exc), None) from None


def default_cache_dir() -> Path:
    """Where compiled databases are cached: $XDG_CACHE_HOME/extproc/hyperscan or ~/.cache/…."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "extproc" / "hyperscan"


def _cache_key(expressions: Sequence[Expression]) -> str:
    # Serialized databases are only valid for the same hyperscan build and CPU family.
    try:
        version = importlib.metadata.version("hyperscan")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    digest = hashlib.sha256(f"{version}|{platform.machine()}".encode())
    for expression in expressions:
        digest.update(f"\0{expression.flags}\0{expression.pattern}".encode())
    return digest.hexdigest()[:32]


def _cached_compile(expressions: Sequence[Expression], cache_dir: Path | None) -> Any:
    """Compile, reusing a serialized database for the identical expression set when one exists.

    Compiling the full rule set takes seconds while loading it takes microseconds; the cache is
    best-effort: any read or write problem just means compiling again.
    """
    if cache_dir is None:
        return _compile(expressions)
    path = cache_dir / f"hs-{_cache_key(expressions)}.db"
    try:
        return hyperscan.loadb(path.read_bytes(), hyperscan.HS_MODE_BLOCK)
    except (OSError, hyperscan.error):
        pass
    database = _compile(expressions)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a concurrent reader never sees half a file.
        with tempfile.NamedTemporaryFile(dir=cache_dir, delete=False, suffix=".tmp") as handle:
            handle.write(hyperscan.dumpb(database))
        os.replace(handle.name, path)
    except (OSError, hyperscan.error):
        pass
    return database
