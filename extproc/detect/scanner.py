"""The regex tier: load rule packs once, then turn (text, role) into findings in one pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import hyperscan

from extproc.detect.encoding import PROBES, decode_run, run_bounds
from extproc.detect.engine import CompileError, Engine, Expression, RawMatch, default_cache_dir
from extproc.detect.errors import RulePackError, ScanError
from extproc.detect.findings import Category, Finding, Role, Severity
from extproc.detect.mention import is_mention
from extproc.detect.normalize import normalize
from extproc.detect.pii import SuppressionContext
from extproc.detect.resolve import Candidate, resolve_overlaps
from extproc.detect.rules import ROLE_BITS, Rule, default_rule_files, load_rules
from extproc.detect.spans import extend_end

__all__ = ["RulePackError", "ScanError", "Scanner"]

# `^`/`$` are line anchors in every rule (role markers live at line starts). UCP is off on
# purpose: hyperscan rejects `\b` under UCP, and with ASCII word semantics a keyword glued to
# CJK text ("你是DAN") still sits on a word boundary.
_BASE_FLAGS = hyperscan.HS_FLAG_UTF8 | hyperscan.HS_FLAG_MULTILINE
_RULE_FLAGS = _BASE_FLAGS | hyperscan.HS_FLAG_SOM_LEFTMOST

# What a decoded payload is rescanned for: instructions, not data.
_ENCODED_CATEGORIES = frozenset(
    {
        Category.PROMPT_INJECTION,
        Category.JAILBREAK,
        Category.ROLE_INJECTION,
        Category.DELIMITER_INJECTION,
        Category.AGENT_ACTION,
        Category.ENCODING_ATTACK,  # a payload nested one level deeper
    }
)
_MAX_DECODE_DEPTH = 2  # base64 of base64 is caught; deeper nesting is not worth the work

# Categories whose quoted or cited matches are downgraded (see mention.py). Role tokens and
# delimiters are not: the upstream tokenizer reacts to them whatever the intent.
_MENTION_CATEGORIES = frozenset({Category.PROMPT_INJECTION, Category.JAILBREAK})
_MENTION_CONFIDENCE_FACTOR = 0.5


def _expression(rule: Rule) -> Expression:
    flags = _RULE_FLAGS if rule.case_sensitive else _RULE_FLAGS | hyperscan.HS_FLAG_CASELESS
    return Expression(rule.pattern, flags)


def _char_offsets(data: bytes, byte_offsets: set[int]) -> dict[int, int]:
    """Map UTF-8 byte offsets (always on character boundaries in UTF-8 mode) to str indices."""
    result: dict[int, int] = {}
    previous_byte = previous_char = 0
    for offset in sorted(byte_offsets):
        previous_char += len(data[previous_byte:offset].decode("utf-8", "ignore"))
        previous_byte = offset
        result[offset] = previous_char
    return result


class Scanner:
    """Compiled rule packs; `scan` is synchronous, thread-safe and never raises on input."""

    def __init__(self, rules: Sequence[Rule], cache_dir: Path | None = None) -> None:
        self._rules = tuple(rules)
        expressions = [_expression(rule) for rule in self._rules]
        expressions += [Expression(probe.pattern, _BASE_FLAGS) for probe in PROBES]
        try:
            self._engine = Engine(expressions, cache_dir)
        except CompileError as exc:
            if exc.index is not None and exc.index < len(self._rules):
                rule = self._rules[exc.index]
                raise RulePackError(
                    f"{rule.source}: rule {rule.id!r}: pattern does not compile: {exc}"
                ) from None
            raise RulePackError(f"rule packs do not compile: {exc}") from None

    @classmethod
    def load(
        cls,
        rule_files: Sequence[Path] | None = None,
        *,
        cache_dir: Path | Literal["default"] | None = "default",
    ) -> Scanner:
        """Compile the given packs, or every bundled `policies/rules/*.yaml` when None.

        The compiled database is cached under `cache_dir` (None disables the cache).
        """
        files = default_rule_files() if rule_files is None else rule_files
        directory = default_cache_dir() if cache_dir == "default" else cache_dir
        return cls(load_rules(files), directory)

    @property
    def rule_count(self) -> int:
        """How many rules are compiled (the built-in encoding probes are not counted)."""
        return len(self._rules)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The loaded rules, in pack order."""
        return self._rules

    def scan(self, text: str, role: Role) -> list[Finding]:
        """Findings in `text` written by `role`, sorted by start, offsets into `text` itself."""
        try:
            return self._scan(text, role)
        except ScanError:
            raise
        except Exception as exc:  # a bug here must surface as one typed error, not crash a stream
            raise ScanError(f"scanner failed: {exc!r}") from exc

    def _scan(self, text: str, role: Role) -> list[Finding]:
        norm = normalize(text)
        candidates = self._candidates(norm.text, role, depth=0)
        findings = []
        for hit in candidates:
            start, end = norm.to_original(hit.start, hit.end)
            findings.append(
                Finding(
                    type=hit.type,
                    category=hit.category,
                    severity=hit.severity,
                    confidence=hit.confidence,
                    start=start,
                    end=end,
                    rule_id=hit.rule_id,
                )
            )
        findings.sort(key=lambda f: (f.start, f.end, f.rule_id))
        return findings

    def _candidates(self, folded: str, role: Role, depth: int) -> list[Candidate]:
        """Resolved matches over already-folded text, in folded-text offsets."""
        data = folded.encode("utf-8")
        hits = self._engine.scan(data)
        if not hits:
            return []
        rule_count = len(self._rules)
        role_bit = ROLE_BITS[role]
        rules = self._rules
        ends_by_start: dict[tuple[int, int], list[int]] = {}
        probe_ends: list[tuple[int, int]] = []
        for pattern_id, start, end in hits:
            if pattern_id >= rule_count:
                probe_ends.append((pattern_id - rule_count, end))
            elif rules[pattern_id].role_mask & role_bit:
                ends_by_start.setdefault((pattern_id, start), []).append(end)
        to_char = None if len(data) == len(folded) else _char_offsets(data, _offsets(hits))
        candidates: list[Candidate] = []
        context: SuppressionContext | None = None
        for (pattern_id, start), end_list in ends_by_start.items():
            rule = rules[pattern_id]
            if to_char is not None:
                start = to_char[start]
                end_list = [to_char[end] for end in end_list]
            if rule.suppress and context is None:
                context = SuppressionContext(folded)
            candidate = _confirm(rule, folded, start, end_list, context)
            if candidate is None:
                continue
            if candidate.category in _MENTION_CATEGORIES and is_mention(
                folded, candidate.start, candidate.end
            ):
                candidate = _as_mention(candidate)
            candidates.append(candidate)
        if probe_ends and depth < _MAX_DECODE_DEPTH:
            for probe_index, end in probe_ends:
                char_end = end if to_char is None else to_char[end]
                encoded = self._decoded_attack(folded, role, probe_index, char_end, depth)
                if encoded is not None:
                    candidates.append(encoded)
        return resolve_overlaps(candidates)

    def _decoded_attack(
        self, folded: str, role: Role, probe_index: int, end: int, depth: int
    ) -> Candidate | None:
        """An encoding_attack candidate when the run ending its probe at `end` hides an attack."""
        probe = PROBES[probe_index]
        start, run_end = run_bounds(folded, end, probe)
        decoded = decode_run(folded[start:run_end], probe.encoding)
        if decoded is None:
            return None
        inner = [
            hit
            for hit in self._candidates(normalize(decoded).text, role, depth + 1)
            if hit.category in _ENCODED_CATEGORIES
        ]
        if not inner:
            return None
        worst = max(inner, key=lambda hit: (hit.severity, hit.confidence))
        return Candidate(
            start=start,
            end=run_end,
            category=Category.ENCODING_ATTACK,
            type=Category.ENCODING_ATTACK.value,
            # Hiding an instruction is itself hostile: never below HIGH.
            severity=max(worst.severity, Severity.HIGH),
            confidence=worst.confidence,
            rule_id=f"encoding.{probe.encoding.value}:{worst.rule_id}",
            validated=False,
        )


def _as_mention(candidate: Candidate) -> Candidate:
    """The same match, reported as a quoted/cited mention: at most MEDIUM, lower confidence."""
    return replace(
        candidate,
        severity=min(candidate.severity, Severity.MEDIUM),
        confidence=round(candidate.confidence * _MENTION_CONFIDENCE_FACTOR, 3),
    )


def _offsets(hits: list[RawMatch]) -> set[int]:
    offsets: set[int] = set()
    for _, start, end in hits:
        offsets.add(start)
        offsets.add(end)
    return offsets


def _confirm(
    rule: Rule,
    folded: str,
    start: int,
    ends: list[int],
    context: SuppressionContext | None,
) -> Candidate | None:
    """Apply extension, validation and suppression to one (rule, start) and its match ends."""
    # A validated rule may match too far (an IBAN running into the next word): the longest
    # end that validates wins. Unvalidated rules simply take the longest match.
    choices = sorted(set(ends), reverse=True) if rule.validator else [max(ends)]
    for end in choices:
        if rule.extend is not None:
            end = extend_end(folded, end, rule.extend)
        if rule.validator is not None and not rule.validator(folded[start:end]):
            continue
        if context is not None and rule.suppress and context.suppressed(start, end, rule.suppress):
            return None
        return Candidate(
            start=start,
            end=end,
            category=rule.category,
            type=rule.type,
            severity=rule.severity,
            confidence=rule.confidence,
            rule_id=rule.id,
            validated=rule.validator is not None,
        )
    return None
