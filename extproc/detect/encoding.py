"""Find base64 and hex runs and decode them, so hidden instructions can be scanned too.

The probe patterns match only the first 24 (base64) or 32 (hex) characters of a run, right
after a non-alphabet character: one match per run instead of one per character. The scanner
then measures the whole run, decodes it here, and rescans the decoded text.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from enum import StrEnum

from extproc.detect.spans import BASE64_CHARS, HEX_CHARS, run_length


class Encoding(StrEnum):
    """Encodings the scanner decodes."""

    BASE64 = "base64"
    HEX = "hex"


@dataclass(frozen=True, slots=True)
class Probe:
    """A hyperscan pattern that spots the start of an encoded run."""

    encoding: Encoding
    pattern: str
    min_length: int
    alphabet: str


BASE64_MIN = 24
HEX_MIN = 32

PROBES: tuple[Probe, ...] = (
    Probe(
        Encoding.BASE64,
        rf"(?:^|[^A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{{{BASE64_MIN}}}",
        BASE64_MIN,
        BASE64_CHARS,
    ),
    Probe(Encoding.HEX, rf"(?:^|[^0-9A-Fa-f])[0-9A-Fa-f]{{{HEX_MIN}}}", HEX_MIN, HEX_CHARS),
)

# A run longer than this is a file (an image, an archive), not a smuggled instruction; only its
# head is decoded, which still catches an instruction placed at the start.
MAX_RUN = 65_536
# Decoded text shorter than this can't hold an instruction worth rescanning.
MIN_DECODED = 8

_WHITESPACE_DELETE = str.maketrans("", "", "\t\n\r ")


def run_bounds(text: str, end: int, probe: Probe) -> tuple[int, int]:
    """[start, end) of the whole run (base64 padding included) whose head ends at `end`."""
    start = end - probe.min_length
    end += run_length(text, end, probe.alphabet, MAX_RUN - probe.min_length)
    if probe.encoding is Encoding.BASE64:
        end += run_length(text, end, "=", 2)
    return start, end


def _decode_bytes(run: str, encoding: Encoding) -> bytes | None:
    try:
        if encoding is Encoding.HEX:
            return bytes.fromhex(run[: len(run) // 2 * 2])
        standard = run.replace("-", "+").replace("_", "/").rstrip("=")
        usable = len(standard) // 4 * 4 + (len(standard) % 4 if len(standard) % 4 > 1 else 0)
        standard = standard[:usable]
        return binascii.a2b_base64(standard + "=" * (-len(standard) % 4))
    except (ValueError, binascii.Error):
        return None


def _printable(raw: bytes) -> str | None:
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # Binary data (images, hashes, keys) almost never decodes to fully printable text.
    if not decoded.translate(_WHITESPACE_DELETE).isprintable():
        return None
    return decoded


def decode_run(run: str, encoding: Encoding) -> str | None:
    """The run decoded to printable UTF-8 text, or None when it decodes to anything else."""
    # A run can begin with alphabet letters that belong to the surrounding prose ("Xa1..."),
    # which shifts the base64 quantum; the other three alignments are tried before giving up.
    shifts = range(4) if encoding is Encoding.BASE64 else range(2)
    for shift in shifts:
        raw = _decode_bytes(run[shift:], encoding)
        if raw is not None and len(raw) >= MIN_DECODED:
            decoded = _printable(raw)
            if decoded is not None:
                return decoded
    return None
