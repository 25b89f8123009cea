"""Folding and the offset map back to the original text."""

# These tests feed look-alike characters on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import pytest

from extproc.detect.normalize import fold_char, normalize


@pytest.mark.parametrize(
    ("original", "folded"),
    [
        ("ｉｇｎｏｒｅ", "ignore"),  # fullwidth (NFKC)
        ("ig\u200bno\u200dre\ufeff", "ignore"),  # zero-width characters
        ("ign\u00adore", "ignore"),  # soft hyphen
        ("іgnоrе", "ignore"),  # Cyrillic look-alikes
        ("ιgνοre", "igvore"),  # Greek look-alikes (nu folds to v)
        ("ìgnörè", "ignore"),  # accents stripped
        ("i\u0307gnore", "ignore"),  # combining dot above
        ("𝐢𝐠𝐧𝐨𝐫𝐞", "ignore"),  # mathematical bold
        ("\U000e0069\U000e0067\U000e006e", "ign"),  # Unicode tag characters (ASCII smuggling)
        ("555–123–4567", "555-123-4567"),  # en dashes
        ("ﬁle", "file"),  # ligature expands to two characters
        ("日本語", "日本語"),  # other scripts untouched
    ],
)
def test_fold(original: str, folded: str) -> None:
    assert normalize(original).text == folded


def test_ascii_is_returned_unchanged_without_a_map() -> None:
    result = normalize("plain ascii text")
    assert result.text == "plain ascii text"
    assert result.origin is None


def test_one_to_one_fold_needs_no_map() -> None:
    assert normalize("ｆｕｌｌ").origin is None


def test_offsets_map_back_across_removed_characters() -> None:
    text = "ab\u200bcd"
    result = normalize(text)
    assert result.text == "abcd"
    # "bc" in the folded text covers the zero-width character in the original.
    assert result.to_original(1, 3) == (1, 4)


def test_offsets_map_back_across_expanded_characters() -> None:
    text = "xﬁy"
    result = normalize(text)
    assert result.text == "xfiy"
    assert result.to_original(1, 2) == (1, 2)  # half a ligature still maps to all of it
    assert result.to_original(2, 4) == (1, 3)


def test_lone_surrogate_folds_to_replacement_character() -> None:
    assert fold_char(0xD800) == "\ufffd"
