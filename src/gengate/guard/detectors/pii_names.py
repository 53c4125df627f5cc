"""Person names and street addresses without a statistical model.

Names: runs of capitalised tokens scored by a first/last-name gazetteer (package data built from Faker's MIT
locale files, see `scripts/build_pii_gazetteer.py`), honorifics and context phrases ("my name is", "Dear", "said").
Addresses: a building number with a street-type word (English suffixes, continental prefixes such as "Rue"/"Via",
compound endings such as "-vej"/"-katu"/"-straße"), then units (Apt., Suite) and optionally the locality.
This module only proposes candidates; it does no I/O except reading its own package data when built.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources

from gengate.guard.detectors.pii_context import TrailingContext
from gengate.guard.detectors.pii_patterns import Candidate

# Capitalised English words that are also given names or surnames somewhere ("Will", "May", "Can", "My"):
# a gazetteer hit on one of these alone is not evidence of a name.
_COMMON_TEXT = """
a an the my your our his her their its this that these those what when where which who why how is are was were
be been am do does did don can could will would shall should may might must have has had not no yes ok okay
i me we you he she it they us them hi hello hey dear thanks thank please sorry and or but if so then than
at by for from in into of on to with without about after before over under up down out off as all any each
every some many much more most other such only own same very just also still even ever never now here there
today tomorrow yesterday tonight morning evening night day week month year time date data love baby power
royal princess prince king queen lord lady god bot user name address phone email card bank account street
road avenue mall west east north south new old big little great good best high low long short white black
green brown red gold silver rose grant page hall hill park lake river wood woods field fields star moon sun
english german french spanish italian polish american british australian japanese chinese russian
monday tuesday wednesday thursday friday saturday sunday january february march april june july august
september october november december press close back carry weeks mark bill art will joy hope faith grace
price case rich young story summer winter spring autumn fall holiday christmas easter
"""
COMMON_WORDS = frozenset(_COMMON_TEXT.split())

# A run containing one of these is an organisation or a place, not a person.
_ORG_TEXT = """inc ltd llc plc corp corporation company co group gmbh ag bank university college orchestra band records
    technologies technology associates consulting solutions services systems partners holdings labs capital
    international industries enterprises foundation institute agency media studios pty limited trust"""
ORG_WORDS = frozenset(_ORG_TEXT.split())

_HONORIFIC_TEXT = "mr mrs ms miss mx dr prof sir madam dame lady lord rev fr sr mister"
HONORIFICS = frozenset(_HONORIFIC_TEXT.split())

# Phrases that, ending the 40 characters before a run (then only [\s:,?]), make it likelier a name.
_PERSON_CONTEXT = (
    r"\bname\s*(?:is|was|:)|\bnamed|\bcalled|\bcall me|\bi'?m|\bi am|\bthis is|\bsigned|\bregards,?|\bdear"
    r"|\bhi|\bhello|\bsaid|\bsays|\bmet|\bwith|\bby|\bcontact|\bsurname|\blast name\s*(?:is|:)?|\bfirst name"
    r"|\buser:|\bname:|\bpatient|\bclient|\bcustomer|\bmanager|\bproducer|\bspeaker|\bauthor|\bmr\.?|\bms\.?"
)
_HONORIFIC_BEFORE = r"\b(?:mr|mrs|ms|miss|dr|prof|sir|madam)\.?"
_ORG_AFTER = re.compile(
    r"^\s*(?:inc|ltd|llc|plc|corp|corporation|company|co|group|gmbh|ag|sa|bank|university|college|orchestra|"
    r"band|records|street|st|road|avenue|ave|city|county)\b",
    re.IGNORECASE,
)

_WORD = re.compile(r"[^\W\d_]+(?:['’-](?![sS]\b)[^\W\d_]+)*")
_PARTICLE_TEXT = "van von der den de del della da das do dos di du la le bin ibn al el ter ten"
_PARTICLES = frozenset(_PARTICLE_TEXT.split())


def _load(filename: str) -> frozenset[str]:
    text = resources.files("gengate.guard.data").joinpath(filename).read_text(encoding="utf-8")
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


@dataclass(frozen=True, slots=True)
class Gazetteer:
    """Lower-case word and phrase lists: first and last names (used by `NameRecognizer`), and places,
    organisation affixes, languages, job titles and common words (features of the tagger, see `pii_tagger.py`).
    """

    first: frozenset[str]
    last: frozenset[str]
    places: frozenset[str] = frozenset()
    organisations: frozenset[str] = frozenset()
    languages: frozenset[str] = frozenset()
    jobs: frozenset[str] = frozenset()
    common: frozenset[str] = frozenset()  # ordinary lower-case English words

    @classmethod
    def shipped(cls) -> Gazetteer:
        """The gazetteer shipped as package data."""
        return cls(
            _load("pii_first_names.txt"),
            _load("pii_last_names.txt"),
            _load("pii_places.txt"),
            _load("pii_organisations.txt"),
            _load("pii_languages.txt"),
            _load("pii_jobs.txt"),
            _load("pii_common_words.txt"),
        )

    def without(self, words: frozenset[str]) -> Gazetteer:
        """A copy without `words`, and without every phrase containing one of them (used to measure how much
        a score owes to memorised names and places)."""

        def keep(phrases: frozenset[str]) -> frozenset[str]:
            return frozenset(p for p in phrases if not any(w in words for w in p.split()))

        return Gazetteer(
            self.first - words,
            self.last - words,
            keep(self.places),
            keep(self.organisations),
            keep(self.languages),
            keep(self.jobs),
            self.common,  # evidence against a name: left as it is
        )


def _is_cap(word: str) -> bool:
    return word[0].isupper() and (len(word) == 1 or not word.isupper())


def _upper_class() -> str:
    """A regex set holding every upper-case letter `str.isupper` accepts, and (wholesale) all astral characters."""
    # The regex engine tests a set of BMP characters with one bitmap lookup, but falls back to a linear scan
    # over ranges once any character is above U+FFFF; taking the astral planes whole keeps the bitmap, and the
    # caller re-checks each hit anyway. Scanning the BMP costs a few milliseconds, once, at construction.
    upper = "".join(filter(str.isupper, map(chr, range(0x10000))))
    return f"[{re.escape(upper)}\U00010000-\U0010ffff]"


def _after_sentence_end(text: str, start: int) -> bool:
    """`text[:start]` ends with . ! ? : or a quote, then only whitespace (without copying the prefix)."""
    i = start - 1
    while i >= 0 and text[i].isspace():
        i -= 1
    return i >= 0 and text[i] in '.!?:"'


class NameRecognizer:
    """Scores runs of capitalised words as person names."""

    def __init__(self, gazetteer: Gazetteer) -> None:
        self.gazetteer = gazetteer
        # Where a `_WORD` token starting with an upper-case letter begins: not inside a word, and not after a
        # letter plus apostrophe/hyphen that `_WORD` would have joined (it does not join a trailing 's).
        # The class comes first so the regex engine can skip ahead to candidate letters without a Python loop.
        self._cap_start = re.compile(rf"{_upper_class()}(?<![^\W\d_].)(?:(?<![^\W\d_]['’-].)|(?<=S)(?!\w))", re.DOTALL)
        self._honorific_before = TrailingContext(_HONORIFIC_BEFORE, r"\s")
        self._context_before = TrailingContext(_PERSON_CONTEXT, r"[\s:,?]")

    def _runs(self, text: str) -> Iterator[list[re.Match[str]]]:
        # Equivalent to walking every `_WORD` token, but lower-case text is skipped by one regex search.
        pos = 0
        while (found := self._cap_start.search(text, pos)) is not None:
            match = _WORD.match(text, found.start())
            if match is None:  # an astral character that is not a letter
                pos = found.end()
                continue
            if not _is_cap(match.group()):
                pos = match.end()
                continue
            run = [match]
            while True:
                end = run[-1].end()
                if text.startswith(" ", end):
                    nxt = _WORD.match(text, end + 1)
                elif len(run[-1].group()) == 1 and text.startswith(". ", end):
                    nxt = _WORD.match(text, end + 2)
                else:
                    break
                if nxt is None or not (_is_cap(nxt.group()) or nxt.group() in _PARTICLES):
                    break
                run.append(nxt)
            yield run
            pos = run[-1].end()

    def find(self, text: str) -> Iterator[Candidate]:
        """Yield `pii.person` candidates."""
        for run in self._runs(text):
            yield from self._score_run(text, run)

    def _score_run(self, text: str, run: list[re.Match[str]]) -> Iterator[Candidate]:
        tokens = [m.group() for m in run]
        # Leading common words and honorifics are context, not part of the name.
        first, honorific = 0, False
        while first < len(tokens):
            low = tokens[first].lower()
            if low in HONORIFICS:
                honorific = True
            elif low not in COMMON_WORDS:
                break
            first += 1
        last = len(tokens)
        while last > first and (tokens[last - 1] in _PARTICLES or tokens[last - 1].lower() in COMMON_WORDS):
            last -= 1
        if last == first or last - first > 4:
            return
        words = [w for w in tokens[first:last] if w not in _PARTICLES]
        if any(w.lower() in COMMON_WORDS or w.lower() in ORG_WORDS for w in words):
            return
        start, end = run[first].start(), run[last - 1].end()
        if end < len(text) and text[end] == "." and len(words[-1]) == 1:
            return
        g = self.gazetteer
        lower = [w.lower() for w in words if len(w) > 1]
        if not lower:
            return
        first_hit = lower[0] in g.first
        last_hit = lower[-1] in g.last or (len(lower) > 1 and lower[-1] in g.first)
        if len(lower) == 1:
            score = 0.6 if first_hit else 0.45 if lower[0] in g.last else 0.2
        elif first_hit and last_hit:
            score = 0.9
        elif first_hit or last_hit:
            score = 0.7
        else:
            # Two to four capitalised words mid-sentence are usually a name or an organisation.
            score = 0.5 if start > 0 and text[start - 1] != "\n" and not _after_sentence_end(text, start) else 0.35
        if _ORG_AFTER.match(text[end : end + 20]):
            return
        before = text[max(0, start - 40) : start]
        if honorific or self._honorific_before.ends(before):
            score = max(score, 0.9)
        elif self._context_before.ends(before):
            score = min(1.0, score + 0.3)
        yield Candidate("pii.person", start, end, round(score, 3))


# English street types (Faker en_US/en_GB/en_AU suffix lists, abbreviated forms from USPS Publication 28).
_STREET_SUFFIX = (
    r"street|st|avenue|ave|av|road|rd|drive|dr|lane|ln|way|boulevard|blvd|court|ct|place|pl|terrace|tce|crescent"
    r"|cres|parade|pde|highway|hwy|circle|cir|square|sq|route|trail|trl|parkway|pkwy|close|grove|gardens|alley"
    r"|row|walk|heights|esplanade|quay|mews|loop|pike|plaza|ridge|crossing|junction|expressway|freeway|causeway"
    r"|circuit|cct|point|manor|meadows|view|villas|hills|vale|wharf|bypass|estate|ford|fork|forks|harbor|harbour"
    r"|isle|landing|path|port|spur|station|summit|throughway|turnpike|tunnel|underpass|union|valley|viaduct|well"
    r"|wells|brook|brooks|bridge|burg|center|centre|club|common|corner|corners|course|cove|creek|crest|dale|dam"
    r"|divide|extension|falls|ferry|flats|forest|gateway|glen|green|haven|inlet|island|junction|knoll|knolls"
    r"|lakes?|locks?|mill|mills|mission|motorway|mount|mountain|oval|pass|pines|plains|prairie|ranch|rapids"
    r"|rest|shoal|shores?|skyway|springs?|squares|stream|track|trace|village|ville|vista"
)
# Continental compounds end with the street type: Vesterskovvej, Koskikatu, Hauptstraße, Semperweg.
_STREET_ENDING = (
    r"vej|gade|gatan|gata|vägen|väg|veien|vegen|vei|katu|tie|kuja|polku|straße|strasse|str|weg|laan|straat"
    r"|plein|gasse|allee|allé|utca|út|gränd|stræde|stien|bakken|vænget|torget|torv|plads|dreef|singel|kade"
)
_STREET_PREFIX = (
    r"rue|via|viale|corso|piazza|calle|avenida|av\.|rua|travessa|largo|ulica|ul\.|rambla|paseo|plaza|chemin|allée"
    r"|camino|strada|carrer|boulevard|place|quai|impasse|praça|plac|aleja|al\."
)
_NAME = r"[^\W\d_][^\W\d_'’.-]*"
_CAP = r"[A-ZÀ-ÖØ-ÞΑ-ΩА-Я][^\W\d_'’.-]*"
_NUM = r"\d{1,6}[A-Za-z]?"
_UNIT = r"(?:,?[ \t]*\n?[ \t]*(?i:apt\.?|apartment|suite|ste\.?|unit|flat|level|lvl|floor|fl\.?|#)[ \t]*\w{1,6})"
_ZIP = r"(?:\d{3}[ ]?\d{2}|\d{4,6}|[A-Z]\d[A-Z][ ]?\d[A-Z]\d|[A-Z]{1,2}\d[A-Z\d]?[ ]?\d[A-Z]{2})"
_LOCALITY = (
    rf"(?:,?[ \t]*\n?[ \t]*(?:{_CAP}(?:[ \t]{_CAP}){{0,2}}|{_ZIP}))"
    rf"(?:,?[ \t]*\n?[ \t]*,?[ \t]*(?:[A-Z]{{2,3}}\b|{_CAP}(?:[ \t]{_CAP}){{0,2}}))?(?:[ \t]+{_ZIP})?"
)

# Phrases that, ending the 40 characters before an address (then only [\s:,]), make it likelier one.
_ADDRESS_CONTEXT = (
    r"address|lives?|living|located|located at|meet(?: me| you)? at|sent to|send (?:it |this )?to|deliver(?:ed)?"
    r" to|billing|shipping|postal|mailing|moved to|return to|corner of|stop at|taxi to|office is at|is at|at|on|in"
    r"|to|street"
)
_PO_BOX_WORDS = r"p\.?\s?o\.?\s?box|psc|gpo box|locked bag"
_PO_BOX = rf"(?i:{_PO_BOX_WORDS})"
_LETTER = re.compile(r"[^\W\d_]")


class AddressRecognizer:
    """Finds street addresses: building number + street (+ units, + locality when `with_locality`)."""

    def __init__(self, with_locality: bool = True) -> None:
        tail = _UNIT + "*" + (f"(?:{_LOCALITY})?" if with_locality else "")
        core = (
            # 615 Benedum Drive · 370 3911 Fourth Avenue
            rf"(?:{_NUM}[ ,]+){{1,2}}(?:{_CAP}[ ]){{1,4}}(?i:{_STREET_SUFFIX})\b\.?(?:[ ]\d{{1,5}}\b)?"
            rf"|(?:{_NUM}[ ,]+){{1,2}}(?:{_NAME}[ ]){{1,3}}(?i:street|st|avenue|ave|road|rd|drive|lane|blvd)\b\.?"
            # (28245) Vesterskovvej 79 · Hauptstraße 5a
            rf"|(?:{_NUM}[ ]+)?(?:{_NAME}[ -])?{_NAME}(?i:{_STREET_ENDING})\.?[ ]+{_NUM}\b\.?"
            # (86036) Rua do Arenque 1634 · Rue de Piétrain 371 · 31 Rue Al Imam Al Bakri
            rf"|(?:{_NUM}[ ]+)?(?i:{_STREET_PREFIX})[ ](?:{_NAME}[ ]?){{1,5}}(?:,?[ ]?{_NUM}\b)?"
            # PO Box 123 · PSC 0729, Box 5797
            rf"|{_PO_BOX}[ ]?\d{{1,6}}(?:,[ ]?(?i:box)[ ]\d{{1,6}})?"
            # 20789 Allika 46 (number, one or two words, number): weaker, needs context
            rf"|{_NUM}[ ]+{_NAME}(?:[ ]{_NAME})?[ ]+\d{{1,4}}\b\.?"
        )
        self._regex = re.compile(rf"(?<![\w.-])(?:{core}){tail}")
        # A match starts at a number, a street prefix or a PO box, or one or two words before a street ending
        # that a number follows. Finding those places is cheap when each regex starts with a plain character
        # (the engine then skips ahead in C); the full regex is tried only there.
        self._number_starts = re.compile(r"\d(?<![\w.-].)")
        self._word_starts = _word_gate([f"{p}[ ]" for p in _STREET_PREFIX.split("|")] + _PO_BOX_WORDS.split("|"))
        self._number_after = re.compile(r" \d")
        self._ending_word = re.compile(rf"[^\W\d_]+(?i:{_STREET_ENDING})")
        self._weak = re.compile(rf"{_NUM}[ ]+{_NAME}(?:[ ]{_NAME})?[ ]+\d{{1,4}}\.?")
        self._strong_ending = re.compile(rf"{_NUM}[ ]+{_NAME}(?i:{_STREET_ENDING})")
        self._context_before = TrailingContext(_ADDRESS_CONTEXT, r"[\s:,]")

    def _candidate_starts(self, text: str) -> list[int]:
        starts = {m.start() for m in self._number_starts.finditer(text)}
        starts.update(m.start() for m in self._word_starts.finditer(text))
        for number in self._number_after.finditer(text):
            end = number.start()  # `<word><street ending>.? +<digit>`: walk back to the word
            while end > 0 and text[end - 1] == " ":
                end -= 1
            if end > 0 and text[end - 1] == ".":
                end -= 1
            word = _word_start(text, end)
            if word == end or not self._ending_word.fullmatch(text, word, end):
                continue
            starts.add(word)
            if word >= 2 and text[word - 1] in " -" and _LETTER.match(text, word - 2):
                starts.add(_word_start(text, word - 1))
        return sorted(starts)

    def find(self, text: str) -> Iterator[Candidate]:
        """Yield `pii.street_address` candidates."""
        # The same matches as `self._regex.finditer(text)`, tried only where one can start (see `_starts`).
        done = 0
        for pos in self._candidate_starts(text):
            if pos < done or (match := self._regex.match(text, pos)) is None:
                continue
            start, end = match.span()
            done = end
            value = match.group()
            while end > start and text[end - 1] in " \t\n,":
                end -= 1
            strong = not self._weak.match(value) or bool(self._strong_ending.match(value))
            score = 0.75 if strong else 0.4
            if self._context_before.ends(text[max(0, start - 40) : start]):
                score = min(1.0, score + 0.2)
            yield Candidate("pii.street_address", start, end, score)


def _word_gate(words: list[str]) -> re.Pattern[str]:
    """A regex matching (at least) wherever `(?<![\\w.-])(?i:<one of words>)` can match, that scans fast.

    Each word must start with a plain letter. The regex engine only skips ahead quickly when a pattern opens
    with a case-sensitive character set, so the set holds every character that matches a first letter case-
    insensitively (found by asking the engine, which knows that "ſ" is an "s"); the rest of each word follows
    in a lookahead, paired loosely with any first letter, which can only add places to try.
    """
    firsts = "".join(sorted({w[0].lower() for w in words}))
    if not firsts.isalpha() or not firsts.isascii():
        raise ValueError(f"words must start with ASCII letters: {words}")
    same = re.compile(f"(?i:[{firsts}])")
    variants = "".join(same.findall("".join(map(chr, range(0x10000)))))
    rests = "|".join(w[1:] for w in words)
    return re.compile(rf"[{variants}\U00010000-\U0010FFFF](?<![\w.-].)(?=(?i:{rests}))", re.DOTALL)


def _word_start(text: str, pos: int) -> int:
    """Where the run of letters that `text[pos - 1]` belongs to begins."""
    while pos > 0 and _LETTER.match(text, pos - 1):
        pos -= 1
    return pos
