"""Exceptions raised by the detection tier."""

from __future__ import annotations


class RulePackError(ValueError):
    """A rule pack can't be loaded: bad YAML, unknown key or category, a regex that won't compile.

    The message always names the file and, when one is at fault, the rule id, so an operator
    can fix the pack without reading a traceback.
    """


class ScanError(RuntimeError):
    """The scanner's own state is broken (never raised for any property of the scanned text)."""
