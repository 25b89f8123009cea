"""Checksum and structure validators for matched PII spans, looked up by name from rule packs.

Each validator takes the matched span (separators included) and returns True when the value is
structurally valid. A regex can only say "looks like"; these say "could really be one", which is
what keeps random digit runs from being reported as cards or national ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

Validator = Callable[[str], bool]


def _digits(span: str) -> str:
    """Only the ASCII digits of a span (patterns only ever match ASCII digits)."""
    return "".join(ch for ch in span if "0" <= ch <= "9")


def luhn(span: str) -> bool:
    """Luhn mod-10 check, used by payment cards and the Canadian SIN."""
    digits = _digits(span)
    if len(digits) < 2:
        return False
    total = 0
    for position, ch in enumerate(reversed(digits)):
        value = ord(ch) - 48
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


# Official IBAN lengths per country (SWIFT IBAN registry); the length check alone rejects most
# accidental matches before mod-97 is even computed.
_IBAN_LENGTHS: Mapping[str, int] = MappingProxyType(
    {
        "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
        "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
        "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
        "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
        "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
        "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
        "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
        "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
        "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
        "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
        "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
        "YE": 30,
    }
)  # fmt: skip


def iban(span: str) -> bool:
    """IBAN: known country, that country's exact length, and ISO 7064 mod-97 == 1."""
    compact = "".join(span.split()).upper()
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    # Letters become two-digit numbers (A=10 … Z=35) before the modulus.
    numeric = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(numeric) % 97 == 1


def nhs(span: str) -> bool:
    """UK NHS number: weights 10..2 over nine digits, mod-11 check digit (10 is never issued)."""
    digits = _digits(span)
    if len(digits) != 10:
        return False
    total = sum((10 - i) * (ord(ch) - 48) for i, ch in enumerate(digits[:9]))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == ord(digits[9]) - 48


def sin(span: str) -> bool:
    """Canadian Social Insurance Number: nine digits passing Luhn."""
    digits = _digits(span)
    return len(digits) == 9 and luhn(digits)


_TFN_WEIGHTS = (1, 4, 3, 7, 5, 8, 6, 9, 10)


def tfn(span: str) -> bool:
    """Australian Tax File Number: nine digits, weighted sum divisible by 11."""
    digits = _digits(span)
    if len(digits) != 9:
        return False
    return sum(w * (ord(ch) - 48) for w, ch in zip(_TFN_WEIGHTS, digits, strict=True)) % 11 == 0


def ssn(span: str) -> bool:
    """US SSN: area not 000, 666 or 9xx; group not 00; serial not 0000."""
    digits = _digits(span)
    if len(digits) != 9:
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


_NINO_BAD_PREFIXES = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def nino(span: str) -> bool:
    """UK National Insurance number: the prefixes HMRC never allocates are rejected."""
    return "".join(span.split())[:2].upper() not in _NINO_BAD_PREFIXES


def e164(span: str) -> bool:
    """International phone number: 8 to 15 digits in total, country code included."""
    return 8 <= len(_digits(span)) <= 15


def has_digit(span: str) -> bool:
    """At least one digit: a nine-letter word is not a passport number."""
    return any("0" <= ch <= "9" for ch in span)


def passport_nl(span: str) -> bool:
    """Dutch passport: a letter among characters 4-8, which sets it apart from IT/ES formats."""
    return any(ch.isalpha() for ch in span[3:8])


VALIDATORS: Mapping[str, Validator] = MappingProxyType(
    {
        "luhn": luhn,
        "iban": iban,
        "nhs": nhs,
        "sin": sin,
        "tfn": tfn,
        "ssn": ssn,
        "nino": nino,
        "e164": e164,
        "has_digit": has_digit,
        "passport_nl": passport_nl,
    }
)
