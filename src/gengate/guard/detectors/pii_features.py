"""Tokens and features of the PII tagger, shared by `scripts/train_pii_tagger.py` and run time.

Training and inference must see exactly the same features, so both come from here: `tokenize` splits text into
words, digit runs, URLs, e-mail addresses and single punctuation characters (with character offsets), and
`Featurizer` describes each token by its form (shape, affixes, digit count), its identity (the lower-cased word)
and its gazetteer flags, and each position by those of its neighbours and the whitespace around it. Feature
values are plain strings; the tagger maps them to weight rows. Pure: the gazetteers are passed in.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from gengate.guard.detectors.pii_names import COMMON_WORDS, HONORIFICS, ORG_WORDS, Gazetteer

_URL = r"(?:https?://|www\.)[^\s<>\"'()]*[^\s<>\"'().,;:!?]"  # a URL (not its trailing punctuation)
_EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"  # an e-mail address
_WORD = r"[^\W\d_]+(?:['’](?![sS]\b)[^\W\d_]+)*"  # a word; O'Brien stays whole, a possessive 's does not
_TOKEN = re.compile(rf"{_URL}|{_EMAIL}|{_WORD}|\d+|\S")
# The same alternation without the URL and e-mail branches, which are tried (and fail) at every token start: a
# text with no "@" holds no e-mail address and one with neither "://" nor "www." no URL, and dropping a branch
# that cannot match anywhere leaves every match of the others (and so the tokens) unchanged.
_TOKEN_VARIANTS = {
    (True, True): _TOKEN,
    (True, False): re.compile(rf"{_URL}|{_WORD}|\d+|\S"),
    (False, True): re.compile(rf"{_EMAIL}|{_WORD}|\d+|\S"),
    (False, False): re.compile(rf"{_WORD}|\d+|\S"),
}
# Street types and building parts, also the cue words of the rule-based recognizers (pii_names).
_STREET_TYPES_TEXT = """
street st avenue ave av road rd drive dr lane ln way boulevard blvd court ct place pl terrace tce crescent cres parade
pde highway hwy circle cir square sq route trail trl parkway pkwy close grove gardens alley row walk heights esplanade
quay mews loop pike plaza ridge crossing junction expressway freeway causeway circuit cct point manor meadows view
villas hills vale wharf bypass estate ford fork forks harbor harbour isle landing path port spur station summit
throughway turnpike tunnel underpass union valley viaduct well wells brook brooks bridge burg center centre club common
corner corners course cove creek crest dale dam divide extension falls ferry flats forest gateway glen green haven inlet
island knoll knolls lake lakes lock locks mill mills mission motorway mount mountain oval pass pines plains prairie
ranch rapids rest shoal shore shores skyway spring springs squares stream track trace village ville vista streets roads
avenues
"""
_STREET_TYPES = frozenset(_STREET_TYPES_TEXT.split())
_STREET_PREFIX_TEXT = """
rue via viale corso piazza calle avenida rua travessa largo ulica ul rambla paseo chemin allée camino strada carrer quai
impasse praça plac aleja al
"""
_STREET_PREFIXES = frozenset(_STREET_PREFIX_TEXT.split())
_STREET_ENDINGS_TEXT = (
    "vej|gade|gatan|gata|vägen|väg|veien|vegen|vei|katu|tie|kuja|polku|straße|strasse|str|weg|laan|straat"
    "|plein|gasse|allee|allé|utca|gränd|stræde|stien|bakken|vænget|torget|torv|plads|dreef|singel|kade"
)
_STREET_ENDING = re.compile(rf".{{2,}}(?:{_STREET_ENDINGS_TEXT})")
# A word must end with one of these for `_STREET_ENDING` to match it; `str.endswith` rules out most words in C.
_STREET_SUFFIXES = tuple(_STREET_ENDINGS_TEXT.split("|"))
_UNIT_TEXT = "apt apartment suite ste unit flat level floor fl box po psc gpo bag lot"
_UNIT_WORDS = frozenset(_UNIT_TEXT.split())
# Street types of USPS Publication 28 missing above (they are not tagger features; `names_a_street` uses them).
_MORE_STREET_TYPES_TEXT = "fort mall lodge park pier run camp cape hollow orchard garden neck ramp radial"
_MORE_STREET_TYPES = frozenset(_MORE_STREET_TYPES_TEXT.split())
_WORD_RUN = re.compile(r"[^\W\d_]+")


def names_a_street(text: str) -> bool:
    """Whether a text without a house number can still be an address: it holds a street type ("Loop", "Fort"),
    a street prefix ("rue", "via") or a word with a street ending ("Puruntie", "Hauptstraße")."""
    for word in _WORD_RUN.findall(text):
        low = word.lower()
        if low in _STREET_TYPES or low in _MORE_STREET_TYPES or low in _STREET_PREFIXES or low in _UNIT_WORDS:
            return True
        if low.endswith(_STREET_SUFFIXES) and _STREET_ENDING.fullmatch(low):
            return True
    return False


_CALENDAR_TEXT = """
monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thur thurs fri sat sun january february
march april may june july august september october november december jan feb mar apr jun jul aug sep sept oct nov dec
"""
_CALENDAR = frozenset(_CALENDAR_TEXT.split())


def tokenize(text: str) -> list[tuple[int, int]]:
    """Character spans of the tokens of `text`."""
    regex = _TOKEN_VARIANTS["://" in text or "www." in text, "@" in text]
    return [m.span() for m in regex.finditer(text)]


# ASCII letters and digits to their classes (the other ASCII characters stand for themselves).
_ASCII_CLASSES = str.maketrans(
    {**dict.fromkeys(string.ascii_uppercase, "X"), **dict.fromkeys(string.ascii_lowercase, "x")}
    | dict.fromkeys(string.digits, "d")
)
MAX_CACHED_SHAPES = 10_000


def _shape(token: str, cap: int) -> str:
    """Character classes (X, x, d, other characters as themselves) with runs cut to `cap` repeats."""
    out: list[str] = []
    last, run = "", 0
    for ch in token[:16]:
        c = "X" if ch.isupper() else "x" if ch.islower() else "d" if ch.isdigit() else ch
        run = run + 1 if c == last else 1
        last = c
        if run <= cap:
            out.append(c)
    return "".join(out)


def _cut_runs(classes: str, cap: int) -> str:
    """`classes` with runs of one character cut to `cap` repeats (the second half of `_shape`)."""
    out: list[str] = []
    last, run = "", 0
    for c in classes:
        run = run + 1 if c == last else 1
        last = c
        if run <= cap:
            out.append(c)
    return "".join(out)


def gap_kind(gap: str) -> str:
    """What separates two tokens: nothing, spaces, one line break, or more."""
    if not gap:
        return "0"
    lines = gap.count("\n")
    return "s" if lines == 0 else "n" if lines == 1 else "N"


@dataclass(frozen=True, slots=True)
class WordInfo:
    """What a token says about itself: form features, identity feature and gazetteer flags."""

    form: tuple[str, ...]
    ident: str
    short: str
    flags: tuple[str, ...]


class Featurizer:
    """Builds tagger features from a gazetteer (see module docstring)."""

    def __init__(self, gazetteer: Gazetteer) -> None:
        self.gazetteer = gazetteer
        self._places_whole = frozenset(p for p in gazetteer.places if " " not in p)
        self._places_part = frozenset(w for p in gazetteer.places if " " in p for w in p.split())
        self._orgs = frozenset(w.strip(".,&()") for p in gazetteer.organisations for w in p.split()) | ORG_WORDS
        self._languages = frozenset(w for p in gazetteer.languages for w in p.split())
        self._jobs = frozenset(w for p in gazetteer.jobs for w in p.split()) - COMMON_WORDS
        self._shapes: dict[str, tuple[str, str]] = {}

    def shapes(self, token: str) -> tuple[str, str]:
        """`_shape(token, 1)` and `_shape(token, 3)`. Both depend only on the character classes of the first 16
        characters, which for ASCII one `str.translate` gives, so they are cached by that class string (few
        distinct ones: "Xxxxx", "dd", ...); other tokens take the character loop."""
        head = token[:16]
        if not head.isascii():
            return _shape(token, 1), _shape(token, 3)
        classes = head.translate(_ASCII_CLASSES)
        found = self._shapes.get(classes)
        if found is None:
            if len(self._shapes) >= MAX_CACHED_SHAPES:
                self._shapes.clear()
            found = self._shapes[classes] = (_cut_runs(classes, 1), _cut_runs(classes, 3))
        return found

    def flags(self, low: str) -> tuple[str, ...]:
        """Gazetteer flags of a lower-cased word."""
        g = self.gazetteer
        out: list[str] = []
        if low in g.first:
            out.append("F")
        if low in g.last:
            out.append("L")
        if low in self._places_whole:
            out.append("P")
        if low in self._places_part:
            out.append("Q")
        if low in self._orgs:
            out.append("O")
        if low in self._languages:
            out.append("N")
        if low in self._jobs:
            out.append("J")
        if low in COMMON_WORDS:
            out.append("C")
        if low in g.common:
            out.append("V")
        if low.rstrip(".") in HONORIFICS:
            out.append("H")
        if low in _STREET_TYPES:
            out.append("S")
        if low in _STREET_PREFIXES:
            out.append("R")
        if low.endswith(_STREET_SUFFIXES) and _STREET_ENDING.fullmatch(low) is not None:
            out.append("E")
        if low in _UNIT_WORDS:
            out.append("U")
        if low in _CALENDAR:
            out.append("M")
        return tuple(out)

    def word(self, token: str) -> WordInfo:
        """Form, identity and flags of one token."""
        short, shape = self.shapes(token)
        if "@" in token and len(token) > 2:
            return WordInfo(("s=EMAIL",), "w=<email>", "@", ())
        if token.startswith(("http://", "https://", "www.")) and len(token) > 4:
            return WordInfo(("s=URL",), "w=<url>", "/", ())
        if token.isdigit():
            value = int(token[:6])
            form = [f"n={min(len(token), 12)}", f"nd0={token[0]}"]
            if len(token) <= 3:
                form.append(
                    "v<=12" if value <= 12 else "v<=31" if value <= 31 else "v<=120" if value <= 120 else "v>120"
                )
            elif len(token) == 4 and 1900 <= value <= 2035:
                form.append("year")
            return WordInfo(tuple(form), "w=<d>", short, ())
        low = token.lower()
        form = [f"s={shape}", f"ss={short}"]
        if token[0].isalpha():
            if len(token) >= 4:
                form += [f"p3={low[:3]}", f"x2={low[-2:]}", f"x3={low[-3:]}", f"x4={low[-4:]}"]
            if not token.isascii() and any(ord(ch) > 0x24F for ch in token):
                form.append("nonlatin")
            return WordInfo(tuple(form), f"w={low}", short, self.flags(low))
        return WordInfo(tuple(form), f"w={token}", short, ())


def line_lengths(gaps: list[str]) -> list[int]:
    """For each token, how many tokens its line holds (lines end where a gap holds a line break)."""
    n = len(gaps) - 1
    out = [0] * n
    begin = 0
    for t in range(1, n + 1):
        if t == n or "\n" in gaps[t]:
            for i in range(begin, t):
                out[i] = t - begin
            begin = t
    return out


def layout_key(gaps: list[str], lines: list[int], t: int, short: str) -> tuple[str, str, bool, bool, int, str]:
    """What `layout_features` needs about position `t` (hashable, so the tagger can cache by it)."""
    n = len(lines)
    first = t == 0 or "\n" in gaps[t]
    last = t == n - 1 or "\n" in gaps[t + 1]
    size = lines[t] if lines[t] <= 3 else 5 if lines[t] <= 6 else 7
    return gap_kind(gaps[t]), gap_kind(gaps[t + 1]), first, last, size, short


def layout_features(before: str, after: str, first: bool, last: bool, size: int, short: str) -> list[str]:
    """Whitespace around a token, where it sits in its line and the line's size (address blocks, forms)."""
    return [f"gb={before}", f"ga={after}", f"ln={size}", f"lf={first}|ll={last}|ss={short}"]


def position_features(
    infos: list[WordInfo],
    gaps: list[str],
    t: int,
    known: list[bool],
    flagged: list[bool],
    lines: list[int],
) -> list[str]:
    """The features of position `t`: its own, its neighbours', and the layout around it.

    `gaps[i]` is the text between token i-1 and token i (`gaps[0]` the text before the first token, `gaps[n]` the
    rest); `lines` comes from `line_lengths(gaps)`. `known[i]` False hides token i's identity (training-time
    dropout, or words held out in evaluation), `flagged[i]` False hides its gazetteer flags. This is the
    reference for the tagger's cached fast path.
    """
    n = len(infos)
    info = infos[t]
    out = ["b", *info.form]
    cap = "C" if info.short[:1] == "X" else "l"
    if known[t]:
        out.append(info.ident)
    if flagged[t]:
        out += [f"g={f}" for f in info.flags]
        out += [f"g{cap}={f}" for f in info.flags]
    for o in (-2, -1, 1, 2):
        i = t + o
        if i < 0 or i >= n:
            out.append(f"{o}w=<s>" if i < 0 else f"{o}w=</s>")
            continue
        other = infos[i]
        if known[i]:
            out.append(f"{o}{other.ident}")
        if o in (-1, 1):
            out.append(f"{o}ss={other.short}")
            if flagged[i]:
                out += [f"{o}g={f}" for f in other.flags]
    prev = _ident(infos, known, t - 1)
    out.append(f"pw|ss={prev}|{info.short}")
    out.append(f"pw2={_ident(infos, known, t - 2)}|{prev}")
    out += layout_features(*layout_key(gaps, lines, t, info.short))
    return out


def _ident(infos: list[WordInfo], known: list[bool], i: int) -> str:
    return "<s>" if i < 0 else infos[i].ident if known[i] else "?"
