"""Fold text into the form rules match against, keeping a map back to the original offsets.

Attackers hide keywords with zero-width characters, fullwidth or mathematical letters,
Cyrillic/Greek look-alikes, accents, and Unicode "tag" characters. Every original character is
folded on its own (so each output character knows which input character produced it) through
a cache; plain ASCII text, the common case, skips all of it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

# Invisible characters that are dropped outright (all format "Cf" characters go as well).
_INVISIBLE = frozenset({0x00AD, 0x034F, 0x180E, 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF})

# Look-alike characters NFKC leaves alone, folded to the ASCII character they imitate. Listed
# by Unicode name because the characters themselves are indistinguishable on screen.
_LOOKALIKES_BY_NAME: dict[str, str] = {
    "CYRILLIC SMALL LETTER A": "a",
    "CYRILLIC SMALL LETTER VE": "b",
    "CYRILLIC SMALL LETTER IE": "e",
    "CYRILLIC SMALL LETTER IE WITH GRAVE": "e",
    "CYRILLIC SMALL LETTER IO": "e",
    "CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I": "i",
    "CYRILLIC SMALL LETTER YI": "i",
    "CYRILLIC SMALL LETTER JE": "j",
    "CYRILLIC SMALL LETTER KA": "k",
    "CYRILLIC SMALL LETTER O": "o",
    "CYRILLIC SMALL LETTER ER": "p",
    "CYRILLIC SMALL LETTER ES": "c",
    "CYRILLIC SMALL LETTER U": "y",
    "CYRILLIC SMALL LETTER HA": "x",
    "CYRILLIC SMALL LETTER DZE": "s",
    "CYRILLIC SMALL LETTER SHHA": "h",
    "CYRILLIC SMALL LETTER KOMI DE": "d",
    "CYRILLIC SMALL LETTER QA": "q",
    "CYRILLIC SMALL LETTER WE": "w",
    "CYRILLIC SMALL LETTER PALOCHKA": "l",
    "CYRILLIC CAPITAL LETTER A": "A",
    "CYRILLIC CAPITAL LETTER VE": "B",
    "CYRILLIC CAPITAL LETTER IE": "E",
    "CYRILLIC CAPITAL LETTER BYELORUSSIAN-UKRAINIAN I": "I",
    "CYRILLIC CAPITAL LETTER JE": "J",
    "CYRILLIC CAPITAL LETTER KA": "K",
    "CYRILLIC CAPITAL LETTER EM": "M",
    "CYRILLIC CAPITAL LETTER EN": "H",
    "CYRILLIC CAPITAL LETTER O": "O",
    "CYRILLIC CAPITAL LETTER ER": "P",
    "CYRILLIC CAPITAL LETTER ES": "C",
    "CYRILLIC CAPITAL LETTER TE": "T",
    "CYRILLIC CAPITAL LETTER U": "Y",
    "CYRILLIC CAPITAL LETTER HA": "X",
    "CYRILLIC CAPITAL LETTER DZE": "S",
    "CYRILLIC CAPITAL LETTER STRAIGHT U": "Y",
    "CYRILLIC CAPITAL LETTER KOMI DE": "D",
    "CYRILLIC CAPITAL LETTER QA": "Q",
    "CYRILLIC CAPITAL LETTER WE": "W",
    "CYRILLIC LETTER PALOCHKA": "I",
    "GREEK SMALL LETTER ALPHA": "a",
    "GREEK SMALL LETTER IOTA": "i",
    "GREEK SMALL LETTER KAPPA": "k",
    "GREEK SMALL LETTER NU": "v",
    "GREEK SMALL LETTER OMICRON": "o",
    "GREEK SMALL LETTER RHO": "p",
    "GREEK SMALL LETTER UPSILON": "u",
    "GREEK SMALL LETTER CHI": "x",
    "GREEK LUNATE SIGMA SYMBOL": "c",
    "GREEK LETTER YOT": "j",
    "GREEK CAPITAL LETTER ALPHA": "A",
    "GREEK CAPITAL LETTER BETA": "B",
    "GREEK CAPITAL LETTER EPSILON": "E",
    "GREEK CAPITAL LETTER ZETA": "Z",
    "GREEK CAPITAL LETTER ETA": "H",
    "GREEK CAPITAL LETTER IOTA": "I",
    "GREEK CAPITAL LETTER KAPPA": "K",
    "GREEK CAPITAL LETTER MU": "M",
    "GREEK CAPITAL LETTER NU": "N",
    "GREEK CAPITAL LETTER OMICRON": "O",
    "GREEK CAPITAL LETTER RHO": "P",
    "GREEK CAPITAL LETTER TAU": "T",
    "GREEK CAPITAL LETTER UPSILON": "Y",
    "GREEK CAPITAL LETTER CHI": "X",
    "GREEK CAPITAL LUNATE SIGMA SYMBOL": "C",
    "LATIN SMALL LETTER DOTLESS I": "i",
    "LATIN SMALL LETTER DOTLESS J": "j",
    "LATIN SMALL LETTER ALPHA": "a",
    "LATIN SMALL LETTER SCRIPT G": "g",
    "LATIN SMALL LETTER IOTA": "i",
    "LATIN LETTER SMALL CAPITAL Y": "y",
    "ARMENIAN SMALL LETTER OH": "o",
    "ARMENIAN SMALL LETTER SEH": "u",
    "ARMENIAN SMALL LETTER VO": "n",
    "HYPHEN": "-",
    "NON-BREAKING HYPHEN": "-",
    "FIGURE DASH": "-",
    "EN DASH": "-",
    "EM DASH": "-",
    "HORIZONTAL BAR": "-",
    "MINUS SIGN": "-",
    "SMALL HYPHEN-MINUS": "-",
    "LEFT SINGLE QUOTATION MARK": "'",
    "RIGHT SINGLE QUOTATION MARK": "'",
    "SINGLE LOW-9 QUOTATION MARK": "'",
    "SINGLE HIGH-REVERSED-9 QUOTATION MARK": "'",
    "LEFT DOUBLE QUOTATION MARK": '"',
    "RIGHT DOUBLE QUOTATION MARK": '"',
    "DOUBLE LOW-9 QUOTATION MARK": '"',
    "DOUBLE HIGH-REVERSED-9 QUOTATION MARK": '"',
}
_HOMOGLYPHS: dict[str, str] = {
    unicodedata.lookup(name): ascii_char for name, ascii_char in _LOOKALIKES_BY_NAME.items()
}

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
    bare = "".join(
        c for c in unicodedata.normalize("NFD", compat) if unicodedata.category(c) != "Mn"
    )
    bare = unicodedata.normalize("NFC", bare)
    return "".join(_HOMOGLYPHS.get(c, c) for c in bare)


_FOLD_CACHE: dict[str, str] = {}


def _fold_cached(ch: str) -> str:
    folded = _FOLD_CACHE.get(ch)
    if folded is None:
        folded = fold_char(ord(ch))
        if len(_FOLD_CACHE) < _CACHE_LIMIT:
            _FOLD_CACHE[ch] = folded
    return folded


# Up to this many distinct changed characters, one C-speed `str.replace` per character beats
# `str.translate`, which boxes every character of the text into an int for a dict lookup.
_REPLACE_LIMIT = 24


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
    # Work per distinct character, not per character: most non-ASCII text (accented words,
    # CJK) has few distinct characters that fold to something else, often none.
    changes: dict[str, str] = {}
    for ch in set(text):
        if ch > "\x7f":
            folded = _fold_cached(ch)
            if folded != ch:
                changes[ch] = folded
    if not changes:
        return Normalized(text, len(text))
    if all(len(folded) == 1 for folded in changes.values()):
        # One character in, one out: offsets are unchanged and no map is needed.
        if len(changes) > _REPLACE_LIMIT:
            table = {ord(ch): folded for ch, folded in changes.items()}
            return Normalized(text.translate(table), len(text))
        folded_text = text
        for ch, folded in changes.items():
            folded_text = folded_text.replace(ch, folded)
        return Normalized(folded_text, len(text))
    return _fold_with_map(text, changes)


def _fold_with_map(text: str, changes: dict[str, str]) -> Normalized:
    """Fold when some characters vanish or expand, recording each output char's source index."""
    pieces: list[str] = []
    origin: list[int] = []
    for index, ch in enumerate(text):
        folded = changes.get(ch, ch)
        pieces.append(folded)
        origin.extend([index] * len(folded))
    return Normalized("".join(pieces), len(text), origin)
