"""The offline PII detector: positives and near-miss negatives per entity, names/addresses, robustness."""

from __future__ import annotations

import random
import re
import time
from dataclasses import replace

import pytest

from gengate.guard.base import ScanRequest
from gengate.guard.detectors import pii_checks as checks
from gengate.guard.detectors.pii import PiiDetector, resolve_overlaps
from gengate.guard.detectors.pii_context import TrailingContext, reverse_pattern
from gengate.guard.detectors.pii_names import AddressRecognizer, Gazetteer, NameRecognizer
from gengate.guard.detectors.pii_patterns import DEFAULT_SPECS, Candidate, PatternRecognizer, PatternSpec


@pytest.fixture(scope="module")
def detector() -> PiiDetector:
    return PiiDetector()


def found(detector: PiiDetector, text: str) -> list[tuple[str, str]]:
    return [(f.label, text[f.start : f.end]) for f in detector.scan(ScanRequest(text))]


@pytest.mark.parametrize(
    ("text", "label", "value"),
    [
        ("write to jane.doe+x@example.co.uk today", "pii.email", "jane.doe+x@example.co.uk"),
        ("call me on 0412 345 678 please", "pii.phone_number", "0412 345 678"),
        ("office (02) 9876 5432 ext", "pii.phone_number", "(02) 9876 5432"),
        ("my mobile is +61 412 345 678", "pii.phone_number", "+61 412 345 678"),
        ("reach me at +1-984-182-0190", "pii.phone_number", "+1-984-182-0190"),
        ("phone: (898)666-3621x0135", "pii.phone_number", "(898)666-3621x0135"),
        ("card 4111 1111 1111 1111 expires", "pii.credit_card", "4111 1111 1111 1111"),
        ("card 5500-0000-0000-0004 expires", "pii.credit_card", "5500-0000-0000-0004"),
        ("amex 378282246310005", "pii.credit_card", "378282246310005"),
        ("IBAN GB82 WEST 1234 5698 7654 32", "pii.iban", "GB82 WEST 1234 5698 7654 32"),
        ("IBAN DE89370400440532013000", "pii.iban", "DE89370400440532013000"),
        ("pay FR1420041010050500013M02606", "pii.iban", "FR1420041010050500013M02606"),
        ("konto NL91ABNA0417164300", "pii.iban", "NL91ABNA0417164300"),
        ("my ssn is 536-90-4399", "pii.us_ssn", "536-90-4399"),
        ("my TFN is 123 456 782", "pii.au_tfn", "123 456 782"),
        ("our ABN is 51 824 753 556", "pii.au_abn", "51 824 753 556"),
        ("medicare number 2123 45670 1", "pii.au_medicare", "2123 45670 1"),
        ("blocked from 192.168.10.20 again", "pii.ip_address", "192.168.10.20"),
        ("client ip 2001:db8:85a3::8a2e:370:7334", "pii.ip_address", "2001:db8:85a3::8a2e:370:7334"),
        ("passport number X1234567", "pii.passport", "X1234567"),
        ("DOB: 14/03/1987", "pii.date_of_birth", "14/03/1987"),
        ("she was born on March 3, 1990", "pii.date_of_birth", "March 3, 1990"),
    ],
)
def test_finds_structured_pii(detector: PiiDetector, text: str, label: str, value: str) -> None:
    assert (label, value) in found(detector, text)


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 expires",  # Luhn fails
        "IBAN GB82 WEST 1234 5698 7654 33",  # mod-97 fails
        "IBAN DE8937040044053201300",  # wrong length for DE
        "ssn 000-12-3456",
        "ssn 666-12-3456",
        "ssn 912-12-3456",
        "ssn 123-00-4567",
        "ssn 123-45-0000",
        "my TFN is 123 456 789",  # checksum fails
        "our ABN is 51 824 753 557",
        "medicare number 2123 45671 1",
        "version 999.1.2.3 released",
        "order 12345678 shipped",
        "invoice INV-2024-0042 is due",
        "the meeting is on 14/03/1987 this morning",  # a date without DOB context
        "we met this morning at Acme Corporation",
        "Thank you, have a great day!",
        "The quick brown fox jumps over the lazy dog.",
        "I have 3 kids in the park",
    ],
)
def test_ignores_near_misses(detector: PiiDetector, text: str) -> None:
    assert found(detector, text) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("My name is Rubija", "Rubija"),
        ("Please correct it to Mrs. Clara R. Dickson today", "Clara R. Dickson"),
        ("Follow up with Sandra Trentino in a couple of months.", "Sandra Trentino"),
        ("Hello, this is Dr. Idris Ibragimov. Who are you?", "Idris Ibragimov"),
    ],
)
def test_finds_person_names_in_sentences(detector: PiiDetector, text: str, value: str) -> None:
    assert ("pii.person", value) in found(detector, text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Meet me at 615 Benedum Drive", "615 Benedum Drive"),
        ("The office is at 12 Hauptstraße 5 in town", "12 Hauptstraße 5"),
        ("send it to Rue de Piétrain 371", "Rue de Piétrain 371"),
        ("ship to 10 Smith Street, Apt. 4, Sydney NSW 2000", "10 Smith Street, Apt. 4, Sydney NSW 2000"),
    ],
)
def test_finds_street_addresses(detector: PiiDetector, text: str, value: str) -> None:
    assert ("pii.street_address", value) in found(detector, text)


def test_entity_list_restricts_labels() -> None:
    only_email = PiiDetector(entities=["email"])
    assert found(only_email, "Mr. John Smith, john@example.com, 0412 345 678") == [("pii.email", "john@example.com")]


def test_threshold_drops_low_scores() -> None:
    text = "reach 0412 345 678"
    assert found(PiiDetector(threshold=0.0), text)
    assert found(PiiDetector(threshold=1.0), text) == []


def test_rejects_unknown_entity_and_bad_threshold() -> None:
    with pytest.raises(ValueError, match="unknown PII entities"):
        PiiDetector(entities=["shoe_size"])
    with pytest.raises(ValueError, match="threshold"):
        PiiDetector(threshold=2.0)


def test_findings_carry_offsets_and_detector_name(detector: PiiDetector) -> None:
    text = "email: a@b.io"
    [finding] = detector.scan(ScanRequest(text))
    assert (finding.start, finding.end, finding.detector) == (7, 13, "pii")
    assert "a@b.io" not in finding.explanation


@pytest.mark.parametrize("text", ["", " ", "\x00\x01\xff\ufffd" * 100, "\ud800 broken surrogate", "1" * 5000])
def test_survives_odd_input(detector: PiiDetector, text: str) -> None:
    assert isinstance(detector.scan(ScanRequest(text)), list)


def test_huge_input_is_bounded_in_time(detector: PiiDetector) -> None:
    text = ("Mr. John Smith lives at 10 Smith Street and paid with 4111 1111 1111 1111. " * 3000)[:200_000]
    t0 = time.perf_counter()
    detector.scan(ScanRequest(text))
    assert time.perf_counter() - t0 < 30  # generous: a regression guard against catastrophic backtracking


@pytest.mark.parametrize(("digits", "ok"), [("123456782", True), ("123456789", False), ("11111111", False)])
def test_tfn_checksum(digits: str, ok: bool) -> None:
    assert checks.tfn_ok(digits) is ok


# The fast paths below must give exactly what the plain regex passes give: they only skip places where
# no match can start. Tricky inputs: case folding (ſ, K, İ), apostrophes and hyphens inside words, astral
# letters, digits glued to words, street endings followed by numbers.
TRICKY = [
    "Mr. John Smith lives at 10 Smith Street, Apt. 4, Sydney NSW 2000 and paid with 4111 1111 1111 1111.",
    "O'Brien-Smith met d'Artagnan; x's-Sam and Jack's S went to Koskikatu 25 Apt. 864\nArtilleros\n, CO",
    "ſep 3, 1990 · DOB 14/03/1987 · born 3rd of March 1990 · 1990-03-14 · SEP 3 1990 · 12th ſeptember 2001",
    "call +61 412 345 678, (02) 9876 5432 or 0412-345-678x12; ssn 536-90-4399; tfn 123 456 782",
    "ABN 51 824 753 556, medicare 2123 45670 1, passport X1234567 or 123456789, ip 192.168.0.1 / fe80::1%eth0",
    "IBAN GB82 WEST 1234 5698 7654 32 and de89370400440532013000; a::b ::1 1:2:3:4:5:6:7:8",
    "RUE de Piétrain 371 · ViA Roma 5 · PſC 0729, Box 5797 · p. o. box 12 · Hauptstraße 5a · 12 Vesterskovvej 79",
    "Dr. 𝐀lice 𝒜da and Ǆemal İstanbul Kelvin K; van der Berg, de la Cruz; J. R. R. Tolkien. A. B.",
    "20789 Allika 46. 615 Benedum Drive 12 · 370 3911 Fourth Avenue · Locked Bag 5 · GPO Box 9",
    "abc123 Main St 12ab-Street 5 x-Rue 7 _Via 9 .Plac 3 9Rua 4 Strasse 5 strasse. 6",
]


@pytest.mark.parametrize("spec", DEFAULT_SPECS, ids=lambda s: s.entity)
def test_gated_patterns_find_what_a_full_scan_finds(spec: PatternSpec) -> None:
    gated, plain = PatternRecognizer(spec), PatternRecognizer(replace(spec, gate=None, needs=""))
    for text in [*TRICKY, " ".join(TRICKY), "\n".join(reversed(TRICKY))]:
        assert list(gated.find(text)) == list(plain.find(text))


def test_address_start_finder_keeps_every_match() -> None:
    recognizer = AddressRecognizer()
    for text in [*TRICKY, " ".join(TRICKY)]:
        found = [(c.start, c.end) for c in recognizer.find(text)]
        plain = [m.start() for m in recognizer._regex.finditer(text)]  # the regex the fast path must agree with
        assert [start for start, _ in found] == plain


def _runs_word_by_word(text: str) -> list[list[tuple[int, int]]]:
    """The reference: walk every word, joining capitalised words (and particles) separated by one space."""
    word = re.compile(r"[^\W\d_]+(?:['’-](?![sS]\b)[^\W\d_]+)*")  # the tokeniser of pii_names

    def cap(w: str) -> bool:
        return w[0].isupper() and (len(w) == 1 or not w.isupper())

    runs: list[list[re.Match[str]]] = []
    run: list[re.Match[str]] = []
    for m in word.finditer(text):
        if run:
            gap = text[run[-1].end() : m.start()]
            joined = gap == " " or (gap == ". " and len(run[-1].group()) == 1)
            if joined and (cap(m.group()) or m.group() in ("van", "de", "der", "la")):
                run.append(m)
                continue
            runs.append(run)
            run = []
        if cap(m.group()):
            run.append(m)
    runs += [run] if run else []
    return [[m.span() for m in r] for r in runs]


def test_capitalised_run_finder_agrees_with_a_word_by_word_walk() -> None:
    names = NameRecognizer(Gazetteer(frozenset(), frozenset()))
    for text in [*TRICKY, "x'S Smith and O'S Brien", "Ǆ 𝐀 ΣΑΣ Σας"]:
        assert [[m.span() for m in r] for r in names._runs(text)] == _runs_word_by_word(text), text


@pytest.mark.parametrize(
    ("phrases", "trailing"),
    [
        (r"\bname\s*(?:is|was|:)|\bi'?m|\bregards,?|\bmr\.?|\blast name\s*(?:is|:)?", r"[\s:,?]"),
        (r"\b(?:mr|mrs|ms|miss|dr|prof|sir|madam)\.?", r"\s"),
        (r"address|lives?|meet(?: me| you)? at|send (?:it |this )?to|at|on|in", r"[\s:,]"),
    ],
)
def test_trailing_context_agrees_with_anchored_search(phrases: str, trailing: str) -> None:
    check = TrailingContext(phrases, trailing)
    forward = re.compile(f"(?:{phrases}){trailing}*$", re.IGNORECASE)
    windows = [
        "my name is ", "My NAME:  ", "namename is", "I'm", "im ", "kind regards,\n", "Mr.", "xmr. ", "Dr ",
        "ſir ", "Lives at: ", "meet you at ", "send this to,", "cat ", "he is in\n", "name is x", "", " ",
    ]  # fmt: skip
    for window in windows:
        assert check.ends(window) == bool(forward.search(window)), window


def test_reverse_pattern_refuses_what_it_cannot_mirror() -> None:
    for pattern in (r"(?<=a)b", r"a{2}", r"a.b", r"^a", r"a+?"):
        with pytest.raises(ValueError):
            reverse_pattern(pattern)


def test_overlap_resolution_matches_the_pairwise_rule() -> None:
    rng = random.Random(5)
    for _ in range(300):
        cands = [
            Candidate("pii.person", s, s + rng.randint(1, 12), rng.choice((0.5, 0.7, 0.9))) for s in
            (rng.randint(0, 60) for _ in range(rng.randint(0, 15)))
        ]  # fmt: skip
        ranked = sorted(cands, key=lambda c: (c.score, c.end - c.start), reverse=True)
        naive: list[Candidate] = []
        for c in ranked:
            if all(c.end <= k.start or c.start >= k.end for k in naive):
                naive.append(c)
        assert resolve_overlaps(cands) == sorted(naive, key=lambda c: c.start)
