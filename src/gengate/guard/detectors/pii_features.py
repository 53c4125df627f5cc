"""Tokens and features of the PII tagger, shared by `scripts/train_pii_tagger.py` and run time.

Training and inference must see exactly the same features, so both come from here: `tokenize` splits text into
words, digit runs, URLs, e-mail addresses and single punctuation characters (with character offsets), and
`Featurizer` describes each token by its form (shape, affixes, digit count), its identity (the lower-cased word)
and its gazetteer flags, and each position by those of its neighbours and the whitespace around it. Feature
values are plain strings; the tagger maps them to weight rows. Pure: the gazetteers are passed in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gengate.guard.detectors.pii_names import COMMON_WORDS, HONORIFICS, ORG_WORDS, Gazetteer

_TOKEN = re.compile(
    r"(?:https?://|www\.)[^\s<>\"'()]*[^\s<>\"'().,;:!?]"  # a URL (not its trailing punctuation)
    r"|[\w.+-]+@[\w-]+(?:\.[\w-]+)+"  # an e-mail address
    r"|[^\W\d_]+(?:['’](?![sS]\b)[^\W\d_]+)*"  # a word; O'Brien stays whole, a possessive 's does not
    r"|\d+"
    r"|\S"
)
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
_STREET_ENDING = re.compile(
    r".{2,}(?:vej|gade|gatan|gata|vägen|väg|veien|vegen|vei|katu|tie|kuja|polku|straße|strasse|str|weg|laan|straat"
    r"|plein|gasse|allee|allé|utca|gränd|stræde|stien|bakken|vænget|torget|torv|plads|dreef|singel|kade)"
)
_UNIT_TEXT = "apt apartment suite ste unit flat level floor fl box po psc gpo bag lot"
_UNIT_WORDS = frozenset(_UNIT_TEXT.split())
_CALENDAR_TEXT = """
monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thur thurs fri sat sun january february
march april may june july august september october november december jan feb mar apr jun jul aug sep sept oct nov dec
"""
_CALENDAR = frozenset(_CALENDAR_TEXT.split())


def tokenize(text: str) -> list[tuple[int, int]]:
    """Character spans of the tokens of `text`."""
    return [m.span() for m in _TOKEN.finditer(text)]


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

    def flags(self, low: str) -> tuple[str, ...]:
        """Gazetteer flags of a lower-cased word."""
        g = self.gazetteer
        checks = (
            ("F", low in g.first),
            ("L", low in g.last),
            ("P", low in self._places_whole),
            ("Q", low in self._places_part),
            ("O", low in self._orgs),
            ("N", low in self._languages),
            ("J", low in self._jobs),
            ("C", low in COMMON_WORDS),
            ("V", low in g.common),
            ("H", low.rstrip(".") in HONORIFICS),
            ("S", low in _STREET_TYPES),
            ("R", low in _STREET_PREFIXES),
            ("E", _STREET_ENDING.fullmatch(low) is not None),
            ("U", low in _UNIT_WORDS),
            ("M", low in _CALENDAR),
        )
        return tuple(name for name, hit in checks if hit)

    def word(self, token: str) -> WordInfo:
        """Form, identity and flags of one token."""
        short = _shape(token, 1)
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
        form = [f"s={_shape(token, 3)}", f"ss={short}"]
        if token[0].isalpha():
            if len(token) >= 4:
                form += [f"p3={low[:3]}", f"x2={low[-2:]}", f"x3={low[-3:]}", f"x4={low[-4:]}"]
            if any(ord(ch) > 0x24F for ch in token):
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
