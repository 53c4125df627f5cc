"""Extractive answers: the most relevant sentences of permitted passages, verbatim, each with its citation.

This is how an app answers with the `offline` provider (no model at all): split the passages the retriever
returned into units (prose sentences, Markdown list items, table rows), score each unit against the question
(rarity-weighted lexical overlap with light stemming, plus cosine similarity when a sentence encoder is given,
plus a small prior from the passage's rank), pick a few non-redundant units and present them in document order,
each followed by `[ref]`. When no unit passes the relevance gate the answerer returns None and the app says it
has no answer instead of guessing.

Owns the segmentation, scoring, selection and trimming of extractive answers. Must not: do I/O, load models (the
encoder is built by its owner and passed in), filter by permissions (passages arrive already permitted), or
produce any text that is not a verbatim (or ellipsis-trimmed) piece of a passage.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "ExtractiveAnswer",
    "ExtractiveAnswerer",
    "Passage",
    "Segment",
    "SentenceEncoder",
    "segment",
    "split_sentences",
]

MIN_RELEVANCE = 0.38  # calibrated by hand cases and SciFact train (see tests/test_rag_answer.py)
MAX_UNIT_CHARS = 400  # longer units are trimmed around their best-matching region...
TRIM_CHARS = 300  # ...to about this many characters
MAX_ENCODED = 60  # most units sent to the encoder for one answer
ENCODED_PASSAGES = 5  # only units of the best passages are encoded
CONTEXT_WEIGHT = 0.5  # a question term found only in the unit's heading, table header or title counts half
UNIT_SHARE = 0.5  # a unit's lexical share: this much its own match, the rest its passage's
NEAR_PREFIX = 6  # shared prefix length that makes two words near matches
LIGHT_WEIGHT = 0.5  # weight of very common content words ("effect", "role", "level")
NEAR_WEIGHT = 0.8  # a question term matched by prefix ("employ" ~ "employees") counts this much
NUMBER_BOOST = 2.0  # numbers, years and amounts in the question matter most in financial documents
NAME_BOOST = 1.5  # capitalised names and tickers in the question
MISSING_NAME_PENALTY = 0.4  # relevance factor when the question's names are missing from every passage...
MISSING_NUMBER_PENALTY = 0.5  # ...or its numbers (applied in proportion when only some are missing)
LEXICAL_SHARE = 0.5  # with an encoder: relevance = share * lexical + (1 - share) * semantic
COSINE_FLOOR = 0.15  # cosine at or below this is "unrelated" (semantic 0)...
COSINE_CEILING = 0.65  # ...and at or above this "as related as it gets" (semantic 1)
RANK_PRIOR = 0.04  # added to the best passage's units, halved for the next, and so on
REDUNDANCY = 0.5  # MMR weight on similarity to units already chosen
NEAR_DUPLICATE = 0.8  # similarity above which a unit repeats one already chosen
SUPPORT_FRACTION = 0.4  # further units must reach this fraction of the best unit's focus
CONFIDENT_MARGIN = 0.2  # the best unit clears the gate by this much and no name in the question is missing


@dataclass(frozen=True, slots=True)
class Passage:
    """One permitted passage from the retriever: `ref` is its 1-based citation number."""

    ref: int
    text: str
    title: str = ""
    score: float = 0.0  # retrieval score, higher is better; informational, the order given is the rank


@dataclass(frozen=True, slots=True)
class ExtractiveAnswer:
    """An answer made of passage units, each followed by its citation marker (`[1]`).

    Prose sentences of one passage share a line; list items and table rows get a line each.
    """

    text: str
    refs: tuple[int, ...]  # passages cited, in order of first use
    sentences: tuple[tuple[str, int], ...]  # (unit, ref) in the order shown, a table row's header row included
    confident: bool  # the best unit cleared the gate by a margin and every name in the question was found


class SentenceEncoder(Protocol):
    """Anything that embeds texts as unit-length vectors (e.g. `gengate.embed.minilm.MiniLMEncoder`)."""

    def encode(self, texts: Sequence[str]) -> npt.NDArray[Any]:
        """Unit-length embeddings [len(texts), dim], in the order given."""
        ...


@dataclass(frozen=True, slots=True)
class Segment:
    """One answerable unit of a passage: a prose sentence, a list item (or one of its sentences), or a table row.

    `text` is verbatim from the passage with runs of whitespace collapsed; `heading` is the nearest Markdown
    heading above it and `header` the header row of its table (for table rows).
    """

    text: str
    kind: str  # "sentence" | "item" | "row" | "header"
    heading: str = ""
    header: str = ""


# --- segmentation ------------------------------------------------------------------------------------------------

_ATX_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*$")
_BOLD_HEADING = re.compile(r"^\*\*([^*]+)\*\*:?$")
_RULE = re.compile(r"^(?:-{3,}|\*{3,}|_{3,}|={3,})$")
_TABLE_SEPARATOR = re.compile(r"^\|?\s*:?-{2,}:?\s*(?:\|\s*:?-{2,}:?\s*)*\|?$")
_LIST_ITEM = re.compile(r"^(?:[-*+•]|\d{1,3}[.)])\s+(.*)$")
_QUOTE = re.compile(r"^>\s?")
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*\s+(?=[A-Z0-9\"“'‘(\[])")
_ABBREVIATIONS = frozenset(
    "al approx ca cf co corp dept dr e.g eg est etc fig figs i.e ie inc jr ltd mr mrs ms no nos op prof ref "  # noqa: SIM905
    "sr st vol vs jan feb mar apr jun jul aug sep sept oct nov dec".split()
)


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _is_table_row(line: str) -> bool:
    return line.startswith("|") or line.count("|") >= 2


def split_sentences(text: str) -> list[str]:
    """Sentences of one paragraph (whitespace already collapsed), skipping breaks after abbreviations."""
    out: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        before = text[start : m.start()].rsplit(" ", 1)[-1].lower().lstrip("(\"'“")
        if before in _ABBREVIATIONS or (len(before) == 1 and before.isalpha()):
            continue  # "et al. 2019", "J. Smith": not a sentence end
        piece = text[start : m.end()].strip()
        if piece:
            out.append(piece)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def segment(text: str) -> list[Segment]:
    """Split a (Markdown or plain) passage into units, in document order.

    Paragraph lines are joined and split into sentences; each list item is its own paragraph; each table row is
    one unit (a table's first row, when a separator follows it, becomes its `header`); headings are not units but
    are kept as the context of the units below them.
    """
    out: list[Segment] = []
    heading = ""
    header = ""
    para: list[str] = []
    para_kind = "sentence"
    table_rows = 0  # rows seen in the current table

    def flush() -> None:
        nonlocal para
        if para:
            for sentence in split_sentences(_collapse(" ".join(para))):
                out.append(Segment(sentence, para_kind, heading))
        para = []

    for raw in text.splitlines():
        line = _QUOTE.sub("", raw.strip()).strip()
        if para_kind == "item" and raw.lstrip().startswith(">"):
            flush()  # a quote after a list item is a block of its own, not the item's continuation
        if not line:
            flush()
            table_rows = 0
            continue
        if (m := _ATX_HEADING.match(line)) or (m := _BOLD_HEADING.match(line)):
            flush()
            heading, table_rows = _collapse(m.group(1)), 0
            continue
        if _RULE.match(line):
            if len(para) == 1 and para_kind == "sentence" and line[0] in "=-":
                heading, para = _collapse(para[0]), []  # setext heading: a line underlined with === or ---
            flush()
            table_rows = 0
            continue
        if _is_table_row(line):
            flush()
            if _TABLE_SEPARATOR.match(line):
                if table_rows == 1 and out and out[-1].kind == "row":
                    header = out[-1].text
                    out[-1] = Segment(header, "header", heading)
                continue
            if table_rows == 0:
                header = ""
            table_rows += 1
            out.append(Segment(_collapse(line), "row", heading, header))
            continue
        table_rows = 0
        if m := _LIST_ITEM.match(line):
            flush()
            para, para_kind = [m.group(1)], "item"
            continue
        if not para:
            para_kind = "sentence"
        para.append(line)
    flush()
    return out


# --- terms -------------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[.,'’][A-Za-z0-9]+)*")
_YEAR_SUFFIX = re.compile(r"[a-z]+((?:19|20)\d\d)")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NUMBER_UNIT = re.compile(r"(\d+(?:\.\d+)?)([a-z]{1,3})")
_STOPWORDS = frozenset(
    "a about above according after again against all also am an and any are as at be because been before being "  # noqa: SIM905
    "below between both but by can could did do does doing done during each either else ever every few for from "
    "further get gets give given had has have having he her here hers him his how however i if in into is it its "
    "itself just know let like list many may me might more most much must my no nor not now of off on once only or "
    "other our out over own per please same say says said she should show so some such tell than that the their "
    "them then there these they this those through to too under until up upon us very want was we were what when "
    "where whether which while who whom whose why will with within without would yes yet you your describe "
    "explain mention mentioned document documents passage text".split()
)


# Irregular forms common in reports ("paid dividends" answers "pay dividends"); regular ones go to the stemmer.
_IRREGULAR_PAIRS = (
    "paid:pay sold:sell grew:grow grown:grow rose:rise risen:rise fell:fall fallen:fall spent:spend made:make "
    "bought:buy held:hold lost:lose led:lead began:begin begun:begin built:build won:win wrote:write written:write "
    "took:take taken:take went:go gone:go men:man women:woman children:child people:person"
)
_IRREGULAR: Mapping[str, str] = MappingProxyType(
    {w: base for w, base in (p.split(":") for p in _IRREGULAR_PAIRS.split())}
)


def _stem(word: str) -> str:
    """A light suffix stripper, applied alike to question and passage words (not a full Porter stemmer)."""
    word = _IRREGULAR.get(word, word)
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif word.endswith("sses"):
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    if len(word) > 5 and word.endswith("ing"):
        word = word[:-3]
    elif (len(word) > 4 and word.endswith("ed")) or (len(word) > 5 and word.endswith("ly")):
        word = word[:-2]
    if len(word) > 4 and word.endswith("e"):
        word = word[:-1]
    return word


# Content words so common in any text that matching them says little (stemmed as `_stem` does): they weigh
# LIGHT_WEIGHT of a normal term.
_LIGHT = frozenset(
    _stem(w)
    for w in "able affect associated based better case cause common different effect effects example find found "  # noqa: SIM905
    "good great high higher important increase increased large less level levels low lower main major make new "
    "number often part play plays possible related result results role several show shown significant similar "
    "small thing time times type use used using various way ways well work year years".split()
)


def _term(token: str) -> str | None:
    """The index term of one token: numbers lose their thousands separators, words are stemmed, stopwords go."""
    low = token.lower()
    if any(c.isdigit() for c in low):
        return low.replace(",", "") if _NUMBER.fullmatch(low) else low.replace(",", "").replace(".", "")
    word = low.replace("’", "'").removesuffix("'s").replace("'", "").replace(".", "").replace(",", "")
    if len(word) < 2 or word in _STOPWORDS:
        return None
    return _stem(word)


def _tokens(text: str) -> list[tuple[str, int, int]]:
    """(term, start, end) for every meaningful token of `text`."""
    out: list[tuple[str, int, int]] = []
    for m in _TOKEN.finditer(text):
        term = _term(m.group())
        if term is None:
            continue
        if (unit := _NUMBER_UNIT.fullmatch(term)) and m.group().islower():  # "40mg" is "40 mg"; "6MP" a name
            out.append((unit.group(1), m.start(), m.end()))
            if unit.group(2) not in _STOPWORDS:
                out.append((unit.group(2), m.start(), m.end()))
            continue
        out.append((term, m.start(), m.end()))
        if year := _YEAR_SUFFIX.fullmatch(term):  # "FY2021" also means "2021"
            out.append((year.group(1), m.start(), m.end()))
    return out


def _is_number(term: str) -> bool:
    """Numbers that single out a fact: years, amounts, percentages; not single digits ("type 2", "1 in 5")."""
    return bool(_NUMBER.fullmatch(term)) and len(term) >= 2


def _terms(text: str) -> frozenset[str]:
    return frozenset(t for t, _, _ in _tokens(text))


@dataclass(frozen=True, slots=True)
class _QueryTerm:
    term: str
    boost: float
    name: bool  # a capitalised name or ticker
    number: bool
    initial: bool = False  # "Tesla's ...?", "Initech: ...?" open the question: a name if the passages lack it


_MASK = re.compile(r"\[[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\]")


def _query_terms(question: str) -> list[_QueryTerm]:
    """Distinct question terms, with names and numbers marked (names only when the question is not Title Case).

    A name is a capitalised word that does not start a sentence, an all-capitals word (a ticker, an acronym) or an
    identifier mixing letters and digits ("B12", "Q3"); a number is one of two or more digits.
    """
    # A redaction mask ("[PII_EMAIL]", from the guard or a dataset built from redacted traces) is not a name
    # the answer must contain; blank it out (same length, so offsets stay put).
    question = _MASK.sub(lambda m: " " * len(m.group()), question)
    matches = list(_TOKEN.finditer(question))
    words = [m.group() for m in matches if m.group()[0].isalpha()]
    capitalised = sum(1 for w in words if w[0].isupper())
    names_reliable = len(words) < 3 or capitalised * 2 <= len(words)
    out: dict[str, _QueryTerm] = {}
    for m in matches:
        token = m.group()
        initial = not question[: m.start()].strip() or question[: m.start()].rstrip().endswith((".", "?", "!", ":"))
        shouting = token.isupper() and sum(c.isalpha() for c in token) >= 2
        capital = token[0].isupper() and not initial
        # "(CKD)" after "chronic kidney disease" abbreviates words already in the question: not a name of its own
        defined = question[: m.start()].endswith("(") and question[m.end() :].startswith(")")
        for term, _, _ in _tokens(token):
            if term in out:
                continue
            number = _is_number(term)
            mixed = any(c.isdigit() for c in term) and any(c.isalpha() for c in term)
            identifier = mixed and not number and not _YEAR_SUFFIX.fullmatch(term)  # "FY2021" is a year
            name = not number and not defined and (identifier or (names_reliable and (shouting or capital)))
            boost = NUMBER_BOOST if number else NAME_BOOST if name else LIGHT_WEIGHT if term in _LIGHT else 1.0
            opener = token.endswith(("'s", "’s")) or question[m.end() : m.end() + 1] == ":"
            first = initial and token[0].isupper() and opener
            out[term] = _QueryTerm(term, boost, name, number, first)
    return list(out.values())


# --- scoring -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Unit:
    rank: int  # position of the passage in the retriever's order
    order: int  # position within the passage
    ref: int
    segment: Segment
    terms: frozenset[str]
    context: frozenset[str]  # terms of the heading, table header and passage title not in the unit itself


@dataclass(frozen=True, slots=True)
class _Lexical:
    share: float  # the unit's match blended with its passage's: what the gate sees
    alone: float  # the unit's match only (context terms at CONTEXT_WEIGHT)
    covers: frozenset[str]  # question terms matched by the unit's own words or its context
    own: frozenset[str]  # question terms matched by the unit's own words


@dataclass(frozen=True, slots=True)
class _Scored:
    unit: _Unit
    relevance: float  # what the gate compares with min_relevance
    focus: float  # relevance of the unit alone, its passage left out
    score: float  # focus plus the rank prior: what selection ranks by
    covers: frozenset[str]
    informative: frozenset[str]  # question terms matched by the unit's own words that are not names or light


def _units(passages: Sequence[Passage]) -> list[_Unit]:
    units: list[_Unit] = []
    for rank, passage in enumerate(passages):
        title = _terms(passage.title)
        for order, seg in enumerate(segment(passage.text)):
            terms = _terms(seg.text)
            if terms and seg.kind != "header":  # a header row is context for its rows; "| | |" says nothing
                context = (title | _terms(seg.heading) | _terms(seg.header)) - terms
                units.append(_Unit(rank, order, passage.ref, seg, terms, context))
    return units


def _near_matches(qterms: Sequence[_QueryTerm], vocabulary: set[str]) -> dict[str, frozenset[str]]:
    """Each question term with the passage words that share a long prefix with it ("infective" ~ "infection",
    "cell" ~ "cellular"): a cheap backstop for the light stemmer."""
    out: dict[str, frozenset[str]] = {}
    for q in qterms:
        near = {q.term}
        if q.term.isalpha() and len(q.term) >= 4:
            for v in vocabulary:
                if v[:4] == q.term[:4] and v.isalpha():
                    shortest = min(len(v), len(q.term))
                    shared = next((k for k in range(shortest) if v[k] != q.term[k]), shortest)
                    if shared >= NEAR_PREFIX or shared == shortest:
                        near.add(v)
        out[q.term] = frozenset(near)
    return out


def _lexical(qterms: Sequence[_QueryTerm], units: Sequence[_Unit]) -> list[_Lexical]:
    """How much of the question's weight each unit matches.

    Terms are weighted by rarity across the units (a term in every unit still weighs half as much as the rarest,
    and one in none as much as the rarest) and boosted for names and numbers; a prefix match counts NEAR_WEIGHT
    and a match only in the unit's heading, header or title CONTEXT_WEIGHT. The gate's share blends the unit's
    match with its whole passage's: a sentence rarely restates everything a question names, but the passage
    around an answer covers it.
    """
    if not qterms:
        return [_Lexical(0.0, 0.0, frozenset(), frozenset()) for _ in units]
    vocabulary: set[str] = set()
    for u in units:
        vocabulary |= u.terms | u.context
    near = _near_matches(qterms, vocabulary)
    n = len(units)
    top = math.log(1.0 + (n - 0.5) / 1.5)  # the idf of a term found in one unit
    weights: dict[str, float] = {}
    for q in qterms:
        df = max(1, sum(1 for u in units if not near[q.term].isdisjoint(u.terms | u.context)))
        idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
        weights[q.term] = q.boost * (0.5 + 0.5 * idf / top if top > 0 else 1.0)
    total = sum(weights.values())
    passage_words: dict[int, set[str]] = {}
    for u in units:
        passage_words.setdefault(u.rank, set()).update(u.terms | u.context)
    passage_share = {
        rank: sum(weights[q] for q, forms in near.items() if not forms.isdisjoint(words)) / total
        for rank, words in passage_words.items()
    }
    out: list[_Lexical] = []
    for u in units:
        got = 0.0
        own: set[str] = set()
        context: set[str] = set()
        for q in qterms:
            forms = near[q.term]
            if not forms.isdisjoint(u.terms):
                got += weights[q.term] * (1.0 if q.term in u.terms else NEAR_WEIGHT)
                own.add(q.term)
            elif not forms.isdisjoint(u.context):
                got += weights[q.term] * CONTEXT_WEIGHT
                context.add(q.term)
        alone = got / total
        share = UNIT_SHARE * alone + (1.0 - UNIT_SHARE) * passage_share[u.rank]
        out.append(_Lexical(share, alone, frozenset(own | context), frozenset(own)))
    return out


def _penalty(qterms: Sequence[_QueryTerm], units: Sequence[_Unit]) -> tuple[float, bool]:
    """The relevance factor for names and numbers of the question that no passage mentions, and whether a name
    is missing. Such words suggest the passages are about something else ("Tesla" against Apple's report),
    however well the rest of the question matches."""
    words: set[str] = set()
    for u in units:
        words |= u.terms | u.context
    penalty, missing_name = 1.0, False
    for is_name, factor in ((True, MISSING_NAME_PENALTY), (False, MISSING_NUMBER_PENALTY)):
        # A capitalised first word ("Tesla's dividends?") counts as a name only when the passages lack it.
        wanted = [q.term for q in qterms if (q.name or (q.initial and q.term not in words) if is_name else q.number)]
        missing = [t for t in wanted if t not in words]
        if missing:
            penalty *= 1.0 - (1.0 - factor) * len(missing) / len(wanted)
            missing_name = missing_name or is_name
    return penalty, missing_name


def _semantic(cosine: float) -> float:
    """Cosine similarity mapped to [0, 1] so it blends with the lexical share on one scale."""
    return min(1.0, max(0.0, (cosine - COSINE_FLOOR) / (COSINE_CEILING - COSINE_FLOOR)))


def _encoded_text(unit: _Unit) -> str:
    """What the encoder sees: list items and table rows with their heading (and header row) for context."""
    seg = unit.segment
    if seg.kind in ("row", "item") and (seg.heading or seg.header):
        return " ".join(x for x in (seg.heading, seg.header, seg.text) if x)
    return seg.text


def _similarity(a: _Unit, b: _Unit) -> float:
    """Jaccard overlap of two units' terms (the redundancy measure)."""
    return len(a.terms & b.terms) / len(a.terms | b.terms)


class ExtractiveAnswerer:
    """Answers a question from permitted passages by extraction, with citations; None when nothing is relevant.

    Without an encoder everything is lexical and pure; with one, the question and the sentences of the best
    passages are also compared by cosine similarity. Build once and share: it keeps no state between answers.
    """

    def __init__(
        self,
        encoder: SentenceEncoder | None = None,
        *,
        max_sentences: int = 3,
        min_relevance: float = MIN_RELEVANCE,
    ) -> None:
        if max_sentences < 1:
            raise ValueError(f"max_sentences must be at least 1, got {max_sentences}")
        if not 0.0 < min_relevance <= 1.0:
            raise ValueError(f"min_relevance must be in (0, 1], got {min_relevance}")
        self.encoder = encoder
        self.max_sentences = max_sentences
        self.min_relevance = min_relevance

    def answer(self, question: str, passages: Sequence[Passage]) -> ExtractiveAnswer | None:
        """The best few units of `passages` (best first) for `question`, or None when none is relevant enough."""
        qterms = _query_terms(question)
        scored, missing_name = self._score(question, qterms, passages)
        # The gate judges each unit with its passage (a passage covering the question makes its units relevant);
        # the pick among the units that pass judges the unit alone (the one that says it).
        passing = [s for s in scored if s.relevance >= self.min_relevance]
        if not passing:
            return None
        best = max(passing, key=lambda s: (s.score, -s.unit.rank, -s.unit.order))
        confident = best.relevance >= self.min_relevance + CONFIDENT_MARGIN and not missing_name
        return _present(self._select(scored, best), qterms, confident)

    def relevance(self, question: str, passages: Sequence[Passage]) -> float:
        """The best unit's relevance, what the gate compares with `min_relevance` (0.0 when there is no unit)."""
        scored, _ = self._score(question, _query_terms(question), passages)
        return max((s.relevance for s in scored), default=0.0)

    def _score(
        self, question: str, qterms: Sequence[_QueryTerm], passages: Sequence[Passage]
    ) -> tuple[list[_Scored], bool]:
        """The candidate units scored, and whether a name in the question appears nowhere in the passages."""
        units = _units(passages)
        if not units or not qterms:  # a question without a single content word cannot be answered honestly
            return [], False
        lexical = _lexical(qterms, units)
        penalty, missing_name = _penalty(qterms, units)
        candidates = list(range(len(units)))
        semantic = [0.0] * len(units)
        lexical_share = 1.0
        if self.encoder is not None:
            lexical_share = LEXICAL_SHARE
            # Encoding is the expensive part: only units of the best passages, the lexically best first.
            candidates = sorted(
                (i for i in candidates if units[i].rank < ENCODED_PASSAGES),
                key=lambda i: (-lexical[i].share, units[i].rank, units[i].order),
            )[:MAX_ENCODED]
            vectors = np.asarray(self.encoder.encode([question, *(_encoded_text(units[i]) for i in candidates)]))
            cosines = vectors[1:].astype(np.float64) @ vectors[0].astype(np.float64)
            for i, cosine in zip(candidates, cosines.tolist(), strict=True):
                semantic[i] = _semantic(float(cosine))
        plain = {q.term for q in qterms if not q.name and q.boost >= 1.0}
        out: list[_Scored] = []
        for i in candidates:
            unit, lex, sem = units[i], lexical[i], semantic[i]
            relevance = penalty * (lexical_share * lex.share + (1.0 - lexical_share) * sem)
            focus = penalty * (lexical_share * lex.alone + (1.0 - lexical_share) * sem)
            informative = lex.own & plain
            prior = RANK_PRIOR / 2**unit.rank
            out.append(_Scored(unit, relevance, focus, focus + prior, lex.covers, informative))
        return out, missing_name

    def _select(self, scored: Sequence[_Scored], best: _Scored) -> list[_Scored]:
        """Greedy MMR after the best unit: further units must be relevant on their own and match a question word
        (not a name, not a very common word) that the units already chosen do not, so each one adds something."""
        floor = best.focus * SUPPORT_FRACTION
        pool = [s for s in scored if s is not best and s.focus >= floor and s.informative]
        chosen = [best]
        covered = set(best.covers)
        while pool and len(chosen) < self.max_sentences:

            def mmr(s: _Scored) -> tuple[float, int, int]:
                overlap = max(_similarity(s.unit, c.unit) for c in chosen)
                return (s.score - REDUNDANCY * overlap, -s.unit.rank, -s.unit.order)

            pick = max(pool, key=mmr)
            pool.remove(pick)
            if pick.informative <= covered:
                continue
            if any(_similarity(pick.unit, c.unit) >= NEAR_DUPLICATE for c in chosen):
                continue
            chosen.append(pick)
            covered |= pick.covers
        return chosen


# --- presentation ------------------------------------------------------------------------------------------------


def _trim(text: str, qterms: Sequence[_QueryTerm]) -> str:
    """`text` itself when at most MAX_UNIT_CHARS long, else the window of about TRIM_CHARS with the most question
    weight, cut at spaces and marked with an ellipsis on each side where text was left out."""
    if len(text) <= MAX_UNIT_CHARS:
        return text
    wanted = {q.term: q.boost for q in qterms}
    hits = [(start, end, term) for term, start, end in _tokens(text) if term in wanted]
    starts = [0] + [m.end() for m in re.finditer(" ", text)]
    best_start, best_gain = 0, -1.0
    for start in starts:
        gain = sum(wanted[t] for t in {t for s, e, t in hits if s >= start and e <= start + TRIM_CHARS})
        if gain > best_gain:
            best_start, best_gain = start, gain
    end = text.rfind(" ", best_start, best_start + TRIM_CHARS + 1)
    if end <= best_start:  # no space to cut at: cut inside the word
        end = best_start + TRIM_CHARS
    if len(text) - best_start <= TRIM_CHARS:
        end = len(text)
    return ("… " if best_start > 0 else "") + text[best_start:end].strip() + (" …" if end < len(text) else "")


def _present(chosen: Sequence[_Scored], qterms: Sequence[_QueryTerm], confident: bool) -> ExtractiveAnswer:
    """Units grouped by passage (passages in order of their best unit), in document order within a passage;
    prose sentences of one passage share a line, list items and table rows get their own."""
    lead: dict[int, float] = {}
    for s in chosen:
        lead[s.unit.rank] = max(lead.get(s.unit.rank, -1.0), s.score)
    ordered = sorted(chosen, key=lambda s: (-lead[s.unit.rank], s.unit.rank, s.unit.order))
    sentences: list[tuple[str, int]] = []
    lines: list[str] = []
    shown_headers: set[tuple[int, str]] = set()
    previous: _Unit | None = None
    for s in ordered:
        unit, seg = s.unit, s.unit.segment
        if seg.kind == "row" and seg.header and (unit.rank, seg.header) not in shown_headers:
            shown_headers.add((unit.rank, seg.header))  # a row of figures means little without its column names
            sentences.append((seg.header, unit.ref))
            lines.append(f"{seg.header} [{unit.ref}]")
        text = _trim(seg.text, qterms)
        sentences.append((text, unit.ref))
        same_paragraph = previous is not None and previous.rank == unit.rank and previous.segment.kind == "sentence"
        if seg.kind == "sentence" and same_paragraph and lines:
            lines[-1] += f" {text} [{unit.ref}]"
        else:
            lines.append(f"{text} [{unit.ref}]")
        previous = unit
    refs = tuple(dict.fromkeys(ref for _, ref in sentences))
    return ExtractiveAnswer("\n".join(lines), refs, tuple(sentences), confident)
