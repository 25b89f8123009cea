"""Find encoded or obfuscated stretches of text and decode them, so hidden instructions are scanned.

Every decoder is driven by a *probe*: a hyperscan pattern compiled into the scanner's one
database, so text without anything encoded costs nothing extra. For each probe match the scanner
asks `run_bounds` for the span to decode, `decode_run` turns it into plain text, and the scanner
rescans that text with the same database (see `Scanner._decoded_attack`).

Three kinds of probe:

* **Runs** (base64, hex, base32): the probe matches only the first N characters of a run, right
  after a character outside the alphabet: one match per run instead of one per character.
* **Tokens** (URL percent-encoding, `\\xXX` / `\\uXXXX` escapes): the probe matches up to the
  first escape of a token; since the text before it cannot hold another escape, that is again
  one match per token.
* **Regions** (ROT13, reversed text, leetspeak and split-letter spelling): these have no
  alphabet of their own, so the probe matches an obfuscated *keyword* ("vtaber" is ROT13
  "ignore", "snoitcurtsni" is "instructions" reversed, "1gn0r3" is leet). The region decoded is
  the stretch of prose around the keyword, on the same line and within a bounded window; only
  the first keyword of a window decodes it, so a text packed with keywords still costs one
  rescan per window. Honest prose has none of these keywords, and a decoded region only becomes
  a finding when the rescan finds an attack in it (ROT13 or reversal of normal text is
  gibberish).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import string
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import hyperscan

from extproc.detect.engine import Engine, Expression, default_cache_dir
from extproc.detect.spans import BASE64_CHARS, HEX_CHARS, run_length


class Encoding(StrEnum):
    """Encodings and obfuscations the scanner decodes (the value names the finding's rule id)."""

    BASE64 = "base64"
    HEX = "hex"
    BASE32 = "base32"
    URL = "url"
    ESCAPE = "escape"
    ROT13 = "rot13"
    REVERSED = "reversed"
    LEET = "leet"


class SpanKind(StrEnum):
    """How the span to decode is found from a probe match (see the module docstring)."""

    RUN = "run"
    TOKEN = "token"
    REGION = "region"


@dataclass(frozen=True, slots=True)
class Probe:
    """A hyperscan pattern that spots the start of an encoded run, token or region."""

    encoding: Encoding
    pattern: str
    min_length: int
    alphabet: str
    kind: SpanKind = SpanKind.RUN


BASE64_MIN = 24
HEX_MIN = 32
BASE32_MIN = 24
BASE32_CHARS = string.ascii_uppercase + "234567"

# A run longer than this is a file (an image, an archive), not a smuggled instruction; only its
# head is decoded, which still catches an instruction placed at the start.
MAX_RUN = 65_536
# Decoded text shorter than this can't hold an instruction worth rescanning.
MIN_DECODED = 8

# -- tokens ------------------------------------------------------------------------------------
# Characters a percent-encoded token may carry unescaped (RFC 3986 unreserved and most
# reserved ones). Quotes, brackets and parentheses end it: they delimit URLs in prose/markdown.
_URL_PLAIN = string.ascii_letters + string.digits + "._~+-!*;:@&=$,/?#"
_URL_CHARS = _URL_PLAIN + "%"
_URL_CLASS = r"A-Za-z0-9._~+!*;:@&=$,/?#-"
_URL_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")

# Backslash escapes (`\x69`, `\u0069`); literal word characters may sit between them, and a
# single space or punctuation mark between two escapes doesn't end the token.
_WORD_CHARS = string.ascii_letters + string.digits + "_"
_ESCAPE = r"\\(?:x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4})"
_ESCAPE_TAIL = re.compile(
    rf"(?:[A-Za-z0-9_.,:;!?'-]*(?: [A-Za-z0-9_.,:;!?'-]*)?{_ESCAPE})*[A-Za-z0-9_]*"
)
_ESCAPE_ONE = re.compile(_ESCAPE)
MAX_TOKEN = 16_384

# -- regions -----------------------------------------------------------------------------------
# Words an instruction-override, prompt-extraction or jailbreak payload can hardly do without.
# Probes look for their ROT13, reversed and leet spellings; the decoded region is then checked
# against every rule, not only these words.
_KEYWORDS = (
    "ignore",
    "disregard",
    "forget",
    "previous",
    "instruction",
    "system",
    "prompt",
    "reveal",
    "jailbr",
    "restriction",
    "unfiltered",
    "uncensored",
    "override",
    "bypass",
    "secret",
    "password",
    "hidden",
    "developer",
    "unrestricted",
)
# Region text: prose on one line. A newline, colon, bracket or quote-like delimiter ends it,
# which usually separates a plain-text lead-in ("Decode this:") from the payload.
_PROSE_CHARS = string.ascii_letters + string.digits + " \t.,;!?'\"-"
# Leet adds its digit/symbol letters and the separators of split spelling ("ig-nore", "s.e.c").
_LEET_MAP = {"a": "4@", "e": "3", "i": "1", "o": "0", "s": "5$", "t": "7"}
_LEET_SEPARATORS = "-._* "
_LEET_CHARS = _PROSE_CHARS + "@$_*"
# Regions are cut into aligned blocks so that every hit in the same block and prose run agrees
# on one region: only the first of them rescans it. The margin keeps an instruction that
# straddles a block boundary whole in the region of the block its keyword sits in.
_REGION_BLOCK = 1024
_REGION_MARGIN = 256
# Longest text a keyword probe can match (a leet keyword with a separator after every letter).
_KEYWORD_REACH = 2 * max(len(word) for word in _KEYWORDS)

_BASE_FLAGS = hyperscan.HS_FLAG_UTF8 | hyperscan.HS_FLAG_MULTILINE


def _class(chars: str) -> str:
    return "[" + "".join("\\" + c if c in "-]\\^$ " else c for c in chars) + "]"


def _leet_pattern(word: str) -> str:
    """`word` spelled with at least one leet letter or intra-word separator (caseless)."""
    sep = _class(_LEET_SEPARATORS) + "?"
    forms = [_class(ch + _LEET_MAP.get(ch, "")) for ch in word]

    def tail(index: int) -> str:
        return "".join(sep + form for form in forms[index:])

    alternatives = []
    for index, ch in enumerate(word):
        # The first obfuscated position is `index`: everything before it is spelled plainly.
        if ch in _LEET_MAP:
            alternatives.append(word[:index] + _class(_LEET_MAP[ch]) + tail(index + 1))
        if index + 1 < len(word):
            alternatives.append(
                word[: index + 1] + _class(_LEET_SEPARATORS) + forms[index + 1] + tail(index + 2)
            )
    return "|".join(alternatives)


_ROT13_PATTERN = "(?i)(?:" + "|".join(codecs.encode(w, "rot13") for w in _KEYWORDS) + ")"
_REVERSED_PATTERN = "(?i)(?:" + "|".join(w[::-1] for w in _KEYWORDS) + ")"
_LEET_PATTERN = "(?i)(?:" + "|".join(_leet_pattern(w) for w in _KEYWORDS) + ")"

PROBES: tuple[Probe, ...] = (
    Probe(
        Encoding.BASE64,
        rf"(?:^|[^A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{{{BASE64_MIN}}}",
        BASE64_MIN,
        BASE64_CHARS,
    ),
    Probe(Encoding.HEX, rf"(?:^|[^0-9A-Fa-f])[0-9A-Fa-f]{{{HEX_MIN}}}", HEX_MIN, HEX_CHARS),
    # RFC 4648 base32 is upper case; a lower-case run is far more often a long word.
    Probe(Encoding.BASE32, rf"(?:^|[^A-Z2-7=])[A-Z2-7]{{{BASE32_MIN}}}", BASE32_MIN, BASE32_CHARS),
    Probe(
        Encoding.URL,
        rf"(?:^|[^{_URL_CLASS}%])[{_URL_CLASS}]*%[0-9A-Fa-f]{{2}}",
        3,
        _URL_CHARS,
        SpanKind.TOKEN,
    ),
    # Form encoding without any %XX ("q=ignore+all+previous+..."): four "+"-joined words.
    Probe(
        Encoding.URL,
        rf"(?:^|[^{_URL_CLASS}%])(?:[\w.-]+=)?[A-Za-z0-9]+(?:\+[A-Za-z0-9]+){{2}}\+",
        3,
        _URL_CHARS,
        SpanKind.TOKEN,
    ),
    Probe(
        Encoding.ESCAPE,
        rf"(?:^|[^A-Za-z0-9_\\])[A-Za-z0-9_]*{_ESCAPE}",
        4,
        _WORD_CHARS,
        SpanKind.TOKEN,
    ),
    Probe(Encoding.ROT13, _ROT13_PATTERN, 0, _PROSE_CHARS, SpanKind.REGION),
    Probe(Encoding.REVERSED, _REVERSED_PATTERN, 0, _PROSE_CHARS, SpanKind.REGION),
    Probe(Encoding.LEET, _LEET_PATTERN, 0, _LEET_CHARS, SpanKind.REGION),
)

_WHITESPACE_DELETE = str.maketrans("", "", "\t\n\r ")


# -- spans -------------------------------------------------------------------------------------
def run_bounds(text: str, end: int, probe: Probe) -> tuple[int, int]:
    """[start, end) of the span to decode for the probe match ending at `end`.

    An empty span means "nothing to decode here" (an earlier match already covers it).
    """
    if probe.kind is SpanKind.TOKEN:
        return _token_bounds(text, end, probe)
    if probe.kind is SpanKind.REGION:
        return _region_bounds(text, end, probe)
    start = end - probe.min_length
    end += run_length(text, end, probe.alphabet, MAX_RUN - probe.min_length)
    if probe.encoding is Encoding.BASE64:
        end += run_length(text, end, "=", 2)
    elif probe.encoding is Encoding.BASE32:
        end += run_length(text, end, "=", 6)
    return start, end


def _token_bounds(text: str, end: int, probe: Probe) -> tuple[int, int]:
    if probe.encoding is Encoding.URL:
        escape_start = end - 3
        plain = _URL_PLAIN
    else:
        escape_start = end - (4 if text[end - 4 : end - 2] in ("\\x", "\\X") else 6)
        plain = _WORD_CHARS
    # The probe's prefix holds no escape, so walking back over plain characters finds the start.
    head = text[max(0, escape_start - MAX_TOKEN) : escape_start]
    start = escape_start - (len(head) - len(head.rstrip(plain)))
    if probe.encoding is Encoding.URL:
        stop = end + run_length(text, end, _URL_CHARS, MAX_TOKEN)
    else:
        match = _ESCAPE_TAIL.match(text, end, min(len(text), end + MAX_TOKEN))
        stop = match.end() if match else end
    return start, stop


def _region_bounds(text: str, end: int, probe: Probe) -> tuple[int, int]:
    block = end // _REGION_BLOCK * _REGION_BLOCK
    low = max(0, block - _REGION_MARGIN)
    high = min(len(text), block + _REGION_BLOCK + _REGION_MARGIN)
    before = text[low:end]
    start = end - (len(before) - len(before.rstrip(probe.alphabet)))
    after = text[end:high]
    stop = end + (len(after) - len(after.lstrip(probe.alphabet)))
    if _earlier_keyword(text, max(start, block - _KEYWORD_REACH), block, end, probe.encoding):
        return end, end
    region = text[start:stop]
    start += len(region) - len(region.lstrip())
    stop -= len(region) - len(region.rstrip())
    return start, max(start, stop)


class _KeywordFinder:
    """A small hyperscan database of the region probes, to see whether a match is the first.

    Built on first use (and cached on disk like the scanner's), with per-thread scratch.
    """

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._region_probes = [p for p in PROBES if p.kind is SpanKind.REGION]

    def _get(self) -> Engine:
        engine = self._engine
        if engine is None:
            with self._lock:
                if self._engine is None:
                    expressions = [Expression(p.pattern, _BASE_FLAGS) for p in self._region_probes]
                    self._engine = Engine(expressions, default_cache_dir())
                engine = self._engine
        return engine

    def ends(self, text: str, encoding: Encoding) -> list[int]:
        """End offsets of `encoding`'s probe matches in ASCII `text`."""
        wanted = next(i for i, p in enumerate(self._region_probes) if p.encoding is encoding)
        return [end for pid, _, end in self._get().scan(text.encode("ascii")) if pid == wanted]


_FINDER = _KeywordFinder()


def _earlier_keyword(text: str, start: int, block: int, end: int, encoding: Encoding) -> bool:
    """Whether a probe match ending in [block, end) precedes the one ending at `end`.

    Such a match belongs to the same block and prose run, so it has already claimed the
    region. The search starts a little before `block` to see a keyword straddling it whole.
    The region's characters are ASCII, so offsets in the encoded slice are character offsets.
    """
    if end - 1 <= start:
        return False
    return any(start + e >= block for e in _FINDER.ends(text[start : end - 1], encoding))


# -- decoding ----------------------------------------------------------------------------------
def _decode_bytes(run: str, encoding: Encoding) -> bytes | None:
    try:
        if encoding is Encoding.HEX:
            return bytes.fromhex(run[: len(run) // 2 * 2])
        if encoding is Encoding.BASE32:
            standard = run.rstrip("=")
            # Valid unpadded lengths are 0, 2, 4, 5 or 7 characters past a full 8-char quantum.
            usable = len(standard) - {1: 1, 3: 1, 6: 1}.get(len(standard) % 8, 0)
            standard = standard[:usable]
            return base64.b32decode(standard + "=" * (-len(standard) % 8))
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
    return decoded if _is_printable(decoded) else None


def _is_printable(decoded: str) -> bool:
    # Binary data (images, hashes, keys) almost never decodes to fully printable text.
    return decoded.translate(_WHITESPACE_DELETE).isprintable()


def _decode_binary(run: str, encoding: Encoding) -> str | None:
    # A run can begin with alphabet letters that belong to the surrounding prose ("Xa1..."),
    # which shifts the quantum; the other alignments are tried before giving up.
    shifts = {Encoding.BASE64: 4, Encoding.BASE32: 8}.get(encoding, 2)
    for shift in range(shifts):
        raw = _decode_bytes(run[shift:], encoding)
        if raw is not None and len(raw) >= MIN_DECODED:
            decoded = _printable(raw)
            if decoded is not None:
                return decoded
    return None


def _decode_url(run: str) -> str | None:
    if "%20" not in run:
        # Form encoding writes spaces as "+"; with "%20" present a "+" is a literal plus.
        run = run.replace("+", " ")
    return _printable(urllib.parse.unquote_to_bytes(run))


def _unescape_one(match: re.Match[str]) -> str:
    return chr(int(match.group()[2:], 16))


def _decode_escape(run: str) -> str:
    decoded = _ESCAPE_ONE.sub(_unescape_one, run)
    # Join UTF-16 surrogate pairs (`\ud83d\ude00`); a lone surrogate becomes U+FFFD.
    return decoded.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


_ROT13_TABLE = str.maketrans(
    string.ascii_lowercase + string.ascii_uppercase,
    string.ascii_lowercase[13:]
    + string.ascii_lowercase[:13]
    + string.ascii_uppercase[13:]
    + string.ascii_uppercase[:13],
)
_LEET_TABLE = str.maketrans({leet: letter for letter, leets in _LEET_MAP.items() for leet in leets})
# Three or more single characters separated by single spaces: "i g n o r e".
_SPACED = re.compile(r"(?<!\S)(?:[A-Za-z0-9@$] ){2,}[A-Za-z0-9@$](?![^\s.,;:!?'\"])")
# A separator between two word characters: "ig-nore", "s.e.c.r.e.t", "in_struc_tions".
_INTRA_SEPARATOR = re.compile(r"(?<=[A-Za-z0-9@$])[-._*]+(?=[A-Za-z0-9@$])")
_LEET_TOKEN = re.compile(r"[A-Za-z0-9@$]+")
_HAS_LETTER = re.compile(r"[A-Za-z]")


# "1" stands for "i" or "l". Where reading it as "l" gives one of the words attack rules look
# for ("ru13s", "4ll", "t3ll", "fi1ter"), that reading wins; otherwise it is an "i".
_L_WORDS = frozenset(
    [
        "all",
        "allow",
        "also",
        "blocked",
        "call",
        "deal",
        "email",
        "evil",
        "explosive",
        "explosives",
        "file",
        "files",
        "filter",
        "filtered",
        "filters",
        "follow",
        "full",
        "fully",
        "guideline",
        "guidelines",
        "harmful",
        "helpful",
        "illegal",
        "jailbreak",
        "jailbroken",
        "kill",
        "language",
        "leak",
        "legal",
        "let",
        "limit",
        "limitations",
        "limited",
        "limits",
        "list",
        "malware",
        "model",
        "moral",
        "old",
        "only",
        "please",
        "plan",
        "polices",
        "policies",
        "policy",
        "real",
        "reveal",
        "role",
        "roles",
        "rule",
        "rules",
        "self",
        "steal",
        "tell",
        "tool",
        "tools",
        "unfiltered",
        "unlimited",
        "unlock",
        "unlocked",
        "will",
        "world",
    ]
)
_MAX_ONES = 3  # a token with more "1"s just reads them all as "i"


def _fold_leet_token(match: re.Match[str]) -> str:
    token = match.group()
    # Only mixed tokens ("h1dd3n") are leet; "2024" and "10" stay numbers.
    if _HAS_LETTER.search(token) is None:
        return token
    folded = token.translate(_LEET_TABLE)
    ones = [i for i, ch in enumerate(token) if ch == "1"]
    if not ones or len(ones) > _MAX_ONES:
        return folded
    for mask in range(1, 1 << len(ones)):
        chars = list(folded)
        for bit, index in enumerate(ones):
            if mask >> bit & 1:
                chars[index] = "l"
        candidate = "".join(chars)
        if candidate.lower() in _L_WORDS:
            return candidate
    return folded


def _decode_leet(region: str) -> str:
    joined = _SPACED.sub(lambda m: m.group().replace(" ", ""), region)
    joined = _INTRA_SEPARATOR.sub("", joined)
    return _LEET_TOKEN.sub(_fold_leet_token, joined)


_TEXT_DECODERS: dict[Encoding, Callable[[str], str | None]] = {
    Encoding.URL: _decode_url,
    Encoding.ESCAPE: _decode_escape,
    Encoding.ROT13: lambda region: region.translate(_ROT13_TABLE),
    Encoding.REVERSED: lambda region: region[::-1],
    Encoding.LEET: _decode_leet,
}


def decode_run(run: str, encoding: Encoding) -> str | None:
    """The span decoded to printable text, or None when it decodes to nothing worth a rescan."""
    if len(run) < MIN_DECODED:
        return None
    decoder = _TEXT_DECODERS.get(encoding)
    if decoder is None:
        return _decode_binary(run, encoding)
    decoded = decoder(run)
    # Unchanged text was scanned already; too short a result holds no instruction.
    if decoded is None or decoded == run or len(decoded) < MIN_DECODED:
        return None
    return decoded if _is_printable(decoded) else None
