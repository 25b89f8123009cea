"""Fold text into the form rules match against, keeping a map back to the original offsets.

Attackers hide keywords with zero-width characters, fullwidth or mathematical letters,
Cyrillic/Greek look-alikes, accents, and Unicode "tag" characters. Every original character is
folded on its own (so each output character knows which input character produced it) through
a cached translation table; plain ASCII text, the common case, skips all of it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

# Invisible characters that are dropped outright (all format "Cf" characters go as well).
_INVISIBLE = frozenset({0x00AD, 0x034F, 0x180E, 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF})

# Look-alike letters NFKC leaves alone, folded to the Latin letter they imitate.
_HOMOGLYPHS: dict[str, str] = {
    # Cyrillic lower / upper
    "а": "a", "в": "b", "е": "e", "ѐ": "e", "ё": "e", "і": "i", "ї": "i", "ј": "j", "к": "k",
    "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "ѕ": "s", "һ": "h", "ԁ": "d", "ԛ": "q",
    "ԝ": "w", "ӏ": "l", "А": "A", "В": "B", "Е": "E", "І": "I", "Ј": "J", "К": "K", "М": "M",
    "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "Ү": "Y",
    "Ԁ": "D", "Ԛ": "Q", "Ԝ": "W", "Ӏ": "I",
    # Greek lower / upper
    "α": "a", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "υ": "u", "χ": "x", "ϲ": "c",
    "ϳ": "j", "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M",
    "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "Ϲ": "C",
    # Latin and Armenian oddities
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɡ": "g", "ɩ": "i", "ʏ": "y", "օ": "o", "ս": "u", "ո": "n",
    # Dashes, minus signs and curly quotes, so separators and quoting behave like ASCII
    "‐": "-", "‑": "-", "‒": "-", "–": "-", "—": "-", "―": "-", "−": "-", "﹣": "-",
    "‘": "'", "’": "'", "‚": "'", "‛": "'", "“": '"', "”": '"', "„": '"', "‟": '"',
}  # fmt: skip

# Unicode tag characters (U+E0020..U+E007E) shadow printable ASCII and render invisibly:
# "ASCII smuggling" hides instructions in them, so they are folded back to what they encode.
_TAG_FIRST, _TAG_LAST = 0xE0020, 0xE007E

# Bounds the translation caches so adversarial text with many distinct code points can't grow
# memory without limit; past it, folds are recomputed instead of stored.
_CACHE_LIMIT = 65_536


def fold_char(code_point: int) -> str:
    """The folded form of one code point (possibly empty, possibly several characters)."""
    if _TAG_FIRST <= code_point <= _TAG_LAST:
        return chr(code_point - 0xE0000)
    if 0xD800 <= code_point <= 0xDFFF:
        # Lone surrogates can't be UTF-8 encoded for the scan; they match nothing anyway.
        return "\ufffd"
    ch = chr(code_point)
    if code_point in _INVISIBLE or unicodedata.category(ch) == "Cf":
        return ""
    compat = unicodedata.normalize("NFKC", ch)
    # Strip combining marks (accents, stacked dots, variation selectors) so "ìgnörè" and
    # "i\u0307gnore" both read "ignore"; NFC afterwards keeps Hangul and the like composed.
    bare = "".join(c for c in unicodedata.normalize("NFD", compat) if unicodedata.category(c) != "Mn")
    bare = unicodedata.normalize("NFC", bare)
    return "".join(_HOMOGLYPHS.get(c, c) for c in bare)


class _FoldTable(dict[int, str]):
    """`str.translate` table that folds each code point, computed on first sight and cached."""

    def __missing__(self, code_point: int) -> str:
        folded = fold_char(code_point)
        if len(self) < _CACHE_LIMIT:
            self[code_point] = folded
        return folded


class _WidthTable(dict[int, str]):
    """`str.translate` table giving chr(len(fold)) per code point, to spot non 1:1 folds at C speed."""

    def __missing__(self, code_point: int) -> str:
        width = chr(len(_FOLD[code_point]))
        if len(self) < _CACHE_LIMIT:
            self[code_point] = width
        return width


_FOLD = _FoldTable()
_WIDTH = _WidthTable()


@dataclass(frozen=True, slots=True)
class Normalized:
    """Folded text plus, when folding changed lengths, each folded char's original index."""

    text: str
    original_length: int
    origin: Sequence[int] | None = None  # None: folded index == original index

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """Map a [start, end) span of the folded text to the original text."""
        origin = self.origin
        if origin is None:
            return start, end
        if start >= len(origin):
            return self.original_length, self.original_length
        first = origin[start]
        # The last folded char's source char is included whole (a ligature split mid-way
        # still redacts the entire ligature).
        last = origin[end - 1] + 1 if end > start else first
        return first, last


def normalize(text: str) -> Normalized:
    """Fold text for matching; see the module docstring for what is folded and why."""
    if text.isascii():
        return Normalized(text, len(text))
    folded = text.translate(_FOLD)
    widths = text.translate(_WIDTH)
    if widths.count("\x01") == len(text):
        return Normalized(folded, len(text))
    origin: list[int] = []
    for index, width in enumerate(widths):
        origin.extend([index] * ord(width))
    return Normalized(folded, len(text), origin)
