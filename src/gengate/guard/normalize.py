"""Undo common obfuscation before text is classified: pure functions, bounded in size and time.

Owns the canonical form the injection classifier is trained on (`canonical`) and the list of views a detector
scans (`scan_views`): the canonical form of the text itself plus the canonical form of any base64, hex, rot13 or
URL-encoded pieces that decode to mostly-printable text. It must not classify, log or keep state; every loop and
regex here is linear in the (capped) input length, and the number and size of decoded pieces is capped.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import codecs
import itertools
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass

MAX_SCAN_CHARS = 200_000  # longer texts are scanned as head + tail (see `bound`)
MAX_DECODED_PIECES = 8
MAX_PIECE_CHARS = 8_192
MAX_DECODE_DEPTH = 2

# Zero-width, bidi controls, soft hyphen, word joiners, variation selectors, Hangul fillers, tag characters.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0000-\U000e007f]"
)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_LINE_BREAK = re.compile(r"\s*\n\s*")
# Runs of horizontal whitespace, except a lone " " (replacing it by " " would change nothing, at a cost per word).
_HSPACE = re.compile(r"[^\S\n]{2,}|[^\S\n ]")

# Cyrillic and Greek letters that render like Latin ones (lower and upper case).
_HOMOGLYPHS = str.maketrans(
    {
        "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
        "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w",
        "ɡ": "g", "ɩ": "i", "ո": "n", "ս": "u",
        "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
        "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J",
        "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u",
        "χ": "x", "γ": "y", "η": "n", "ω": "w",
        "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
        "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    }
)  # fmt: skip
_CONFUSABLE_CHAR = re.compile(r"[\u0370-\u03ff\u0400-\u052f\u0250-\u02af\u0530-\u058f]")
_CONFUSABLE_WORD = re.compile(r"\w*[\u0370-\u03ff\u0400-\u052f\u0250-\u02af\u0530-\u058f]\w*")
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")
_LATIN_LETTER = re.compile(r"[A-Za-z]")
_LOOKALIKES = frozenset(k for k in map(chr, _HOMOGLYPHS))

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s"})
# A whole word (maximal run of [\w@$]) holding a leet character; it is rewritten only if it also holds a letter.
_LEET_WORD = re.compile(r"(?<![\w@$])[\w@$]*[0134578@$][\w@$]*")
# Letters then two or more digits is a name, not leetspeak: "rot13", "base64", "sha256", "utf16".
_NAME_WITH_NUMBER = re.compile(r"[A-Za-z]{2,}[0-9]{2,}")
# Four or more single letters separated by one separator: "i g n o r e", "i.g.n.o.r.e", "i-g-n-o-r-e".
_SPACED = re.compile(r"(?<![\w])(?:[A-Za-z](?:[ .\-_*]|  +)){3,}[A-Za-z](?![\w])")
_SPACED_SEP = re.compile(r"[ .\-_*]")

_BASE64 = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX = re.compile(r"(?:(?:\\x|0x)?[0-9a-fA-F]{2}[ :]?){8,}")
_URL_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")
_HEX_STRIP = re.compile(r"\\x|0x|[ :]")
# Words common in English prose and in injections: rot13 is only tried when it makes the text more English.
_ENGLISH = frozenset((
    "the", "and", "you", "to", "of", "a", "in", "is", "it", "that", "for", "your", "all", "this", "are", "be", "with",
    "not", "ignore", "previous", "instructions", "now", "system", "prompt", "say", "tell", "me", "what", "do", "my",
    "i", "we", "from", "on", "as", "or", "if", "then", "output", "write", "give", "following", "rules", "code",
    "password", "secret", "reveal", "print", "must", "will", "can", "please", "only", "any", "no", "reply", "answer",
    "respond",
))  # fmt: skip
# Where a rot13 piece may start or end: sentence ends, colons and line breaks (rot13 keeps punctuation).
_SEGMENT = re.compile(r"(?<=[.!?:])\s+|\n+")
MAX_ROT13_SEGMENTS = 64
_WORD = re.compile(r"[A-Za-z]+")
_WORD_SPLIT = re.compile(r"([A-Za-z]+)")  # split() then alternates other characters, word, …, other characters


@dataclass(frozen=True, slots=True)
class Bounded:
    """Text cut to a scan budget, and whether anything was cut."""

    text: str
    truncated: bool


def bound(text: str, max_chars: int = MAX_SCAN_CHARS) -> Bounded:
    """Keep the head and tail of over-long text (payloads like to hide at either end)."""
    if len(text) <= max_chars:
        return Bounded(text, False)
    head = max_chars * 3 // 4
    return Bounded(text[:head] + "\n" + text[-(max_chars - head) :], True)


def clean(text: str) -> str:
    """Remove invisible/bidi/control characters and apply NFKC (full-width and math letters become ASCII).

    ASCII text holds no invisible character or surrogate and is its own NFKC form: only controls can change.
    """
    if text.isascii():
        return _CONTROL.sub(" ", text)
    text = _INVISIBLE.sub("", text)
    text = _CONTROL.sub(" ", text)
    text = _SURROGATE.sub("\ufffd", text)  # lone surrogates cannot be encoded; they carry no text
    return unicodedata.normalize("NFKC", text)


def map_homoglyphs(text: str) -> str:
    """Map Cyrillic/Greek look-alikes to Latin in words that mix scripts, or that consist only of look-alikes
    inside mostly-Latin text. Russian or Greek prose is left alone.
    """
    if text.isascii() or not _CONFUSABLE_CHAR.search(text):
        return text  # no Cyrillic/Greek/IPA/Armenian character: no word to map
    latin = len(_LATIN_LETTER.findall(text[:4_000]))
    mostly_latin = latin > 0.5 * sum(ch.isalpha() for ch in text[:4_000])

    def fix(m: re.Match[str]) -> str:
        word = m.group(0)
        if _LATIN_LETTER.search(word) or (mostly_latin and all(ch in _LOOKALIKES or ch.isdigit() for ch in word)):
            return word.translate(_HOMOGLYPHS)
        return word

    return _CONFUSABLE_WORD.sub(fix, text)


def strip_marks(text: str) -> str:
    """Drop combining marks ("zalgo" text, and accents: the classifier sees "uber" for "über" both ways).

    ASCII characters are never combining, so only the runs of other characters are filtered one by one.
    """
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFD", text)
    return _NON_ASCII_RUN.sub(_without_marks, decomposed)


def _without_marks(m: re.Match[str]) -> str:
    return "".join(ch for ch in m.group(0) if not unicodedata.combining(ch))


def unleet(text: str) -> str:
    """Map leetspeak digits and symbols to letters inside words that also contain letters ("1gn0r3" → "ignore").

    Only words holding a leet character are visited (most words hold none), then kept unless they hold a letter.
    """

    def fix(m: re.Match[str]) -> str:
        word = m.group(0)
        if not _LATIN_LETTER.search(word) or _NAME_WITH_NUMBER.fullmatch(word):
            return word
        return word.translate(_LEET)

    return _LEET_WORD.sub(fix, text)


def despace(text: str) -> str:
    """Join letters spelled out one by one ("i g n o r e" → "ignore"); two or more spaces separate words."""

    def fix(m: re.Match[str]) -> str:
        words = re.split(r"  +", m.group(0))
        return " ".join(_SPACED_SEP.sub("", w) for w in words)

    return _SPACED.sub(fix, text)


def canonical(text: str) -> str:
    """The form the classifier is trained and run on: cleaned, de-obfuscated, case-folded, spaces collapsed.

    A run of whitespace becomes one line break when it contains one, else one space: structural rules and
    sentence windows need line starts, while the hashed n-grams read line breaks as spaces.
    """
    return _canonical_of_clean(clean(text))


def _canonical_of_clean(text: str) -> str:
    """`canonical` of a text that is already `clean` (cleaning is idempotent: its output has no invisible,
    control or surrogate character, and NFKC output is NFKC), so callers holding cleaned text skip a pass."""
    text = strip_marks(map_homoglyphs(text))
    text = despace(unleet(text))
    text = _HSPACE.sub(" ", _LINE_BREAK.sub("\n", text))
    return text.strip().casefold()


def _printable(raw: bytes) -> str | None:
    """Decoded bytes as text when they are UTF-8 and mostly printable letters, else None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(text) < 6:
        return None
    printable = sum(ch.isprintable() or ch in "\n\r\t" for ch in text)
    letters = sum(ch.isalpha() or ch == " " for ch in text)
    return text if printable >= 0.95 * len(text) and letters >= 0.6 * len(text) else None


def _b64(segment: str) -> str | None:
    padded = segment + "=" * (-len(segment) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return _printable(raw)


def _hex(segment: str) -> str | None:
    digits = _HEX_STRIP.sub("", segment)
    if len(digits) % 2:
        digits = digits[:-1]
    try:
        return _printable(bytes.fromhex(digits))
    except ValueError:
        return None


def _english_hits(text: str) -> int:
    """How many words (runs of ASCII letters) of the first 4,000 characters are in `_ENGLISH`, any case."""
    return sum(map(_ENGLISH.__contains__, map(str.lower, _WORD.findall(text[:4_000]))))


def _word_hits(text: str) -> tuple[list[str], list[bool]]:
    """`text` split around its words (runs of ASCII letters), and whether each word is in `_ENGLISH`."""
    parts = _WORD_SPLIT.split(text)
    return parts, list(map(_ENGLISH.__contains__, map(str.lower, parts[1::2])))


def _rot13_piece(head: str) -> str | None:
    """The rot13 reading of `head` when it makes the text more English: the whole text, or else the segments
    (sentences, lines, text after a colon) that read as English only once decoded, joined in order. A plain
    preamble ("This is ROT13, decode it:") must not hide an encoded instruction that follows it.

    rot13 changes ASCII letters only, so the text is encoded once and a segment's rot13 is the same slice of it.
    Separators are whitespace, so no word crosses one: a segment of at most 4,000 characters (all counted) holds
    exactly the rot13 hits of the whole text that start inside it. Those are found in one pass, and a segment
    with fewer than 3 is skipped without counting its own; plain hits are counted only when rot13 hits could pass.
    """
    rot = codecs.encode(head, "rot13")
    short = len(head) <= 4_000  # all of it is counted
    if short:
        parts, is_hit = _word_hits(rot)
        rot_hits = sum(is_hit)
    else:
        rot_hits = _english_hits(rot)
    if rot_hits >= 2 and rot_hits >= 2 * _english_hits(head):
        return rot
    if rot_hits < 3 and short:
        return None  # a segment's words are words of the whole (counted in full): none can reach 3 hits
    # The segments of `_SEGMENT.split(head, maxsplit=MAX_ROT13_SEGMENTS)[:MAX_ROT13_SEGMENTS]`, as offsets.
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _SEGMENT.finditer(head):
        if len(spans) == MAX_ROT13_SEGMENTS:
            break
        spans.append((start, m.start()))
        start = m.end()
    else:
        spans.append((start, len(head)))
    spans = spans[:MAX_ROT13_SEGMENTS]
    if not short:
        parts, is_hit = _word_hits(rot[: spans[-1][1]])  # a segment ends before whitespace: no word is cut
    word_starts = list(itertools.accumulate(map(len, parts)))[0::2]  # word k starts where part 2k ends
    hit_starts = list(itertools.compress(word_starts, is_hit))
    decoded = []
    for start, end in spans:
        if end - start < 12:
            continue
        if end - start <= 4_000 and bisect.bisect_left(hit_starts, end) - bisect.bisect_left(hit_starts, start) < 3:
            continue
        rot_seg = rot[start:end]
        hits = _english_hits(rot_seg)
        if hits >= 3 and hits >= 2 * _english_hits(head[start:end]) + 1:
            decoded.append(rot_seg)
    return " ".join(decoded) if decoded else None


def decoded_pieces(text: str, depth: int = MAX_DECODE_DEPTH) -> list[str]:
    """Plain text hidden in `text` as base64, hex, URL-encoding or rot13 (capped in number and size)."""
    found: list[str] = []

    def add(piece: str | None) -> None:
        if piece and len(found) < MAX_DECODED_PIECES and piece not in found:
            found.append(piece[:MAX_PIECE_CHARS])

    for m in _BASE64.finditer(text):
        if len(found) >= MAX_DECODED_PIECES:
            break
        # Long runs of letters only are words or identifiers, not base64 (which mixes cases and digits).
        seg = m.group(0)
        if not seg.isalpha() or not (seg.islower() or seg.isupper()):
            add(_b64(seg[: MAX_PIECE_CHARS * 2]))
    for m in _HEX.finditer(text):
        if len(found) >= MAX_DECODED_PIECES:
            break
        add(_hex(m.group(0)[: MAX_PIECE_CHARS * 4]))
    if len(_URL_ESCAPE.findall(text[:MAX_PIECE_CHARS])) >= 3:
        add(urllib.parse.unquote(text[:MAX_PIECE_CHARS]))
    add(_rot13_piece(text[:MAX_PIECE_CHARS]))
    if depth > 1:
        for piece in list(found):
            for inner in decoded_pieces(piece, depth - 1):
                add(inner)
    return found


def scan_views(text: str, max_chars: int = MAX_SCAN_CHARS) -> list[str]:
    """The canonical text followed by the canonical form of each decoded piece, without duplicates."""
    cleaned = clean(bound(text, max_chars).text)
    views = [_canonical_of_clean(cleaned)]
    for piece in decoded_pieces(cleaned):
        view = canonical(piece)
        if view and view not in views:
            views.append(view)
    return views
