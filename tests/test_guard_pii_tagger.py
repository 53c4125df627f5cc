"""The learned PII tagger: spans in sentences (written here, none copied from the dataset), its combination with
the pattern recognizers, the shipped artifact and its version, and the fast path against the reference features.
"""

from __future__ import annotations

import io
import itertools
import runpy
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gengate.guard.base import ScanRequest
from gengate.guard.detectors.pii import DEFAULT_ENTITIES, ENTITIES, OPT_IN_ENTITIES, PiiDetector, plausible, trim_name
from gengate.guard.detectors.pii_features import Featurizer, line_lengths, position_features, tokenize
from gengate.guard.detectors.pii_names import Gazetteer
from gengate.guard.detectors.pii_tagger import ARTIFACT, PiiTagger, TaggerModel


@pytest.fixture(scope="module")
def model() -> TaggerModel:
    return TaggerModel.shipped()


@pytest.fixture(scope="module")
def gazetteer() -> Gazetteer:
    return Gazetteer.shipped()


@pytest.fixture(scope="module")
def everything(model: TaggerModel, gazetteer: Gazetteer) -> PiiDetector:
    return PiiDetector(entities=ENTITIES, tagger=PiiTagger(model, gazetteer))


@pytest.fixture(scope="module")
def default(model: TaggerModel, gazetteer: Gazetteer) -> PiiDetector:
    return PiiDetector(tagger=PiiTagger(model, gazetteer))


def found(detector: PiiDetector, text: str) -> list[tuple[str, str]]:
    return [(f.label, text[f.start : f.end]) for f in detector.scan(ScanRequest(text))]


@pytest.mark.parametrize(
    ("text", "label", "value"),
    [
        ("Please ask Margarethe Olsen to call me back", "pii.person", "Margarethe Olsen"),
        ("The contract was signed by Tobias Lindqvist yesterday.", "pii.person", "Tobias Lindqvist"),
        ("Ms. Okonkwo will present the quarterly results", "pii.person", "Okonkwo"),
        ("My colleague Priyanka is out of office until Friday.", "pii.person", "Priyanka"),
        ("Our new office is at 48 Harbour Street, please update the records", "pii.street_address",
         "48 Harbour Street"),
        ("She grew up in Lisbon before moving away", "pii.location", "Lisbon"),
        ("He has been living in Norway for ten years.", "pii.location", "Norway"),
        ("The patient is a 47-year-old woman with chest pain", "pii.age", "47"),
        ("Dr. Anand Raman will see you now", "pii.title", "Dr."),
        ("The meeting is on Wednesday at noon", "pii.date_time", "Wednesday"),
        ("They are Brazilian and speak Portuguese at home", "pii.nrp", "Brazilian"),
        # A known gap (docs/guard-pii.md): links are found only in the few contexts the training templates have
        # ("posted a photo", "Website:").
        pytest.param("See my portfolio at https://www.example-portfolio.io/ for details", "pii.domain_name",
                     "https://www.example-portfolio.io/",
                     marks=pytest.mark.xfail(strict=True, reason="links only in trained contexts")),
    ],
)  # fmt: skip
def test_tagger_finds_entities_in_sentences(everything: PiiDetector, text: str, label: str, value: str) -> None:
    assert (label, value) in found(everything, text)


@pytest.mark.parametrize(
    "text",
    [
        "We met this morning to discuss the roadmap.",
        "Order 55821 shipped on time and the invoice is attached.",
        "Thank you for your help, have a lovely evening!",
        "Capital letters In The Middle Of A Title Are Not Names",
        "The quick brown fox jumps over the lazy dog.",
    ],
)
def test_default_entities_leave_ordinary_text_alone(default: PiiDetector, text: str) -> None:
    assert found(default, text) == []


@pytest.mark.parametrize(
    "text",
    [
        "The film came out in (2017) and a sequel followed (2019).",  # years are not phone numbers
        "Use a[::2] to take every second element of the list.",  # a slice is not an IPv6 address
        "Ingredients | mango, 5, 500\nIngredients | apple, 3, 120",  # table cells are not addresses
        "Set x = 5 and y = 12, then compute x + y.",
        "Пожалуйста, составьте план. Спасибо!",  # capitalised words in a script the tagger never saw
        "Напишите письмо. Коллеги ждут ответа.",
    ],
)
def test_tagger_spans_that_cannot_be_what_they_are_labelled_are_dropped(everything: PiiDetector, text: str) -> None:
    assert [label for label, _ in found(everything, text) if label != "pii.location"] == []


@pytest.mark.parametrize(
    ("entity", "value", "cased", "ok"),
    [
        ("phone_number", "(2017)", True, False), ("phone_number", "78 651 450", True, True),
        ("driver_license", "f", True, False), ("driver_license", "F162823540116", True, True),
        ("street_address", "= 27", True, False), ("street_address", "28245", True, True),
        ("street_address", "231 - 1", True, False), ("street_address", "Herceg Gateway", True, True),
        ("street_address", "Marina Fort", True, True), ("street_address", "Sad, Informal, Joyful", True, False),
        ("street_address", "Hauptstraße 5", True, True), ("person", "rice", True, False),
        ("person", "patricia desrosiers", False, True), ("person", "Tomáš Dvořák", True, True),
        ("person", "Пожалуйста", True, False), ("age", "47", True, True), ("age", "forty", True, False),
    ],
)  # fmt: skip
def test_plausibility_of_tagger_values(entity: str, value: str, cased: bool, ok: bool) -> None:
    assert plausible(entity, value, cased) is ok


@pytest.mark.parametrize(
    "text",
    [
        "I worked at Globex Holdings for three years",
        "The conference moved from Vienna to Lisbon on Monday.",
        "Mr. Grant said the German team uses https://example.org/docs for this.",
    ],
)
def test_places_companies_and_dates_are_opt_in(default: PiiDetector, text: str) -> None:
    opt_in = {f"pii.{e}" for e in OPT_IN_ENTITIES}
    assert not [label for label, _ in found(default, text) if label in opt_in]
    assert {"organization", "location", "date_time"} <= OPT_IN_ENTITIES
    assert not OPT_IN_ENTITIES & set(DEFAULT_ENTITIES) and OPT_IN_ENTITIES.issubset(ENTITIES)


def test_validated_patterns_win_over_the_tagger(everything: PiiDetector) -> None:
    text = "Send it to Anna Berg, card 4111 1111 1111 1111, IBAN GB82 WEST 1234 5698 7654 32"
    result = found(everything, text)
    assert ("pii.credit_card", "4111 1111 1111 1111") in result
    assert ("pii.iban", "GB82 WEST 1234 5698 7654 32") in result
    spans = sorted((f.start, f.end) for f in everything.scan(ScanRequest(text)))
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # no overlaps


def test_entities_option_restricts_tagger_labels(model: TaggerModel, gazetteer: Gazetteer) -> None:
    only_places = PiiDetector(entities=["location"], tagger=PiiTagger(model, gazetteer))
    labels = {label for label, _ in found(only_places, "Anna Berg moved from Oslo to Lisbon in May")}
    assert labels <= {"pii.location"}


def test_tagger_entities_need_the_tagger() -> None:
    with pytest.raises(ValueError, match="need the tagger"):
        PiiDetector(entities=["location"], tagger=False)
    assert PiiDetector(tagger=False).version == "3"


def test_findings_say_which_part_found_them(everything: PiiDetector) -> None:
    findings = everything.scan(ScanRequest("Email jane@example.org or ask Margarethe Olsen"))
    how = {f.label: f.explanation for f in findings}
    assert how["pii.email"] == "email pattern"
    assert how["pii.person"] == "person (tagger)"
    assert all(0.5 <= f.score <= 1.0 for f in findings)


def test_threshold_applies_to_tagger_spans(model: TaggerModel, gazetteer: Gazetteer) -> None:
    strict = PiiDetector(entities=["person"], threshold=1.0, tagger=PiiTagger(model, gazetteer))
    assert found(strict, "Please ask Margarethe Olsen to call me back") == []


def test_artifact_loads_from_package_data_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the tagger must not open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    model = TaggerModel.shipped()
    assert model.classes and len(model.features) == len(model.weights)
    assert len(model.version) == 12
    assert PiiDetector().version == f"3+tagger.{model.version}"


def test_version_follows_the_artifact(model: TaggerModel, gazetteer: Gazetteer) -> None:
    data = model.to_bytes()
    same = TaggerModel.from_bytes(data)
    assert same.to_bytes() == data  # the bytes depend only on the model, so the hash does
    assert same.version == model.version  # the shipped artifact is what `to_bytes` writes
    changed = replace(same, weights=same.weights * np.float32(0.5))
    other = TaggerModel.from_bytes(changed.to_bytes())
    assert other.version != same.version
    first = PiiDetector(tagger=PiiTagger(same, gazetteer))
    second = PiiDetector(tagger=PiiTagger(other, gazetteer))
    assert first.version != second.version and other.version in second.version


def test_artifact_holds_no_pickles(model: TaggerModel) -> None:
    from importlib import resources

    data = resources.files("gengate.guard.data").joinpath(ARTIFACT).read_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:  # raises if any array needs pickle
        assert set(npz.files) == {"features", "meta", "weights", "transitions", "start", "end"}
    assert len(data) < 1_000_000


def test_fast_emissions_match_the_reference_features(model: TaggerModel, gazetteer: Gazetteer) -> None:
    tagger = PiiTagger(model, gazetteer)
    featurizer = Featurizer(gazetteer)
    texts = [
        "Mr. Tobias Lindqvist lives at 48 Harbour Street\n Apt. 7\n Lisbon\n Portugal 1100-148",
        "i'm 31, call me on 0412 345 678 or write to jane@example.org; see https://example.org/x.",
        "x",
        "Ünïcödé Ǆemal — ΑΘΗΝΑ  \t\n\n 12-34  O'Brien's",
    ]
    for text in texts:
        spans = tokenize(text)
        fast = tagger.emissions(text, spans)
        infos = [featurizer.word(text[a:b]) for a, b in spans]
        ends = [0, *(b for _, b in spans)]
        gaps = [text[ends[i] : spans[i][0]] for i in range(len(spans))] + [text[ends[-1] :]]
        lines, every = line_lengths(gaps), [True] * len(spans)
        for t in range(len(spans)):
            names = position_features(infos, gaps, t, every, every, lines)
            ids = [model.features[n] for n in names if n in model.features]
            assert np.allclose(fast[t], model.weights[ids].sum(axis=0), atol=1e-3), (text, t)


def test_decode_matches_brute_force_on_short_sequences(model: TaggerModel, gazetteer: Gazetteer) -> None:
    tagger = PiiTagger(model, gazetteer)
    rng = np.random.default_rng(7)
    tags = len(model.transitions)
    trans, start, end = tagger._trans, tagger._start, tagger._end
    for _ in range(20):
        n = int(rng.integers(1, 4))
        emissions = (rng.normal(size=(n, tags)) * 20).astype(np.float32)
        best, best_path = -np.inf, None
        for flat in range(tags**n):
            path = [(flat // tags**i) % tags for i in range(n)]
            score = start[path[0]] + sum(emissions[i, y] for i, y in enumerate(path)) + end[path[-1]]
            score += sum(trans[a, b] for a, b in itertools.pairwise(path))
            if score > best:
                best, best_path = score, path
        assert best_path is not None
        expected = []
        t = 0
        while t < n:
            if best_path[t] % 2 == 1:
                u = t + 1
                while u < n and best_path[u] == best_path[t] + 1:
                    u += 1
                expected.append((t, u - 1, (best_path[t] - 1) // 2))
                t = u
            else:
                t += 1
        assert [(a, b, k) for a, b, k, margin in tagger.decode(emissions) if margin >= 0] == expected


def _plain_viterbi(tagger: PiiTagger, emissions: np.ndarray) -> list[int]:
    trans, n = tagger._trans, len(emissions)
    alpha, back = tagger._start + emissions[0], []
    for t in range(1, n):
        scores = alpha[:, None] + trans
        back.append(scores.argmax(axis=0))
        alpha = scores.max(axis=0) + emissions[t]
    path = [int((alpha + tagger._end).argmax())]
    for best in reversed(back):
        path.append(int(best[path[-1]]))
    return path[::-1]


def test_skipping_forced_outside_runs_gives_the_full_viterbi_path(model: TaggerModel, gazetteer: Gazetteer) -> None:
    tagger = PiiTagger(model, gazetteer)
    rng = np.random.default_rng(11)
    words = [
        "the",
        "Anna",
        "Berg",
        "lives",
        "at",
        "12",
        "Harbour",
        "Street",
        ",",
        "Oslo",
        "0150",
        "and",
        "works",
        "for",
        "Globex",
        "Inc",
        ".",
        "call",
        "555",
        "0134",
    ]
    checked = forced = 0
    for i in range(300):
        if i % 2:
            text = " ".join(rng.choice(words, size=int(rng.integers(3, 80))))
            emissions = tagger.emissions(text, tokenize(text))
        else:  # random emissions, "outside" favoured to different degrees
            emissions = (rng.normal(size=(int(rng.integers(3, 60)), len(model.transitions))) * 8).astype(np.float32)
            emissions[:, 0] += rng.choice([0.0, 10.0, 40.0])
        forced += int(tagger._bounds.forced(emissions).sum())
        spans = [(a, b, k) for a, b, k, _ in tagger.decode(emissions)]
        plain = _plain_viterbi(tagger, emissions)
        expected, t = [], 0
        while t < len(plain):
            if plain[t] % 2:
                u = t + 1
                while u < len(plain) and plain[u] == plain[t] + 1:
                    u += 1
                expected.append((t, u - 1, (plain[t] - 1) // 2))
                t = u
            else:
                t += 1
        assert spans == expected
        checked += 1
    assert checked == 300 and forced > 200  # the shortcut was actually taken


def test_feature_cache_starts_again_when_full(
    model: TaggerModel, gazetteer: Gazetteer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gengate.guard.detectors import pii_tagger

    monkeypatch.setattr(pii_tagger, "MAX_CACHED_ROWS", 200)
    small, fresh = PiiTagger(model, gazetteer), PiiTagger(model, gazetteer)
    texts = [f"Please ask Person{i} Olsen{i} to call 555-01{i:02d} from Lisbon {i}" for i in range(60)]
    for text in texts:
        spans = tokenize(text)
        assert np.allclose(small.emissions(text, spans), PiiTagger(model, gazetteer).emissions(text, spans), atol=1e-4)
        assert len(small._rows) <= 200
    assert list(small.find(texts[-1])) == list(fresh.find(texts[-1]))


def test_long_input_is_decoded_in_bounded_pieces(everything: PiiDetector) -> None:
    text = "Please ask Margarethe Olsen to call me back. " * 400
    findings = everything.scan(ScanRequest(text))
    assert sum(1 for f in findings if f.label == "pii.person") >= 390


def test_docs_example_runs(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "guard-pii.md").read_text(encoding="utf-8")
    example = tmp_path / "example.py"
    example.write_text(doc.split("```python\n", 1)[1].split("```", 1)[0], encoding="utf-8")
    namespace = runpy.run_path(str(example))
    assert {f.label for f in namespace["findings"]} == {"pii.person", "pii.credit_card"}


@pytest.mark.parametrize(
    ("value", "trimmed"),
    [("M. C. Escher made", "M. C. Escher"), ("Tracey said", "Tracey"), ("Dyan van Gijn", "Dyan van Gijn"),
     ("van Gogh", "van Gogh"), ("Hauta-aho", "Hauta-aho"), ("add rice", "")],
)  # fmt: skip
def test_names_lose_the_lower_case_words_at_their_edges(value: str, trimmed: str) -> None:
    text = f"In this Text: {value}"
    start, end = trim_name(text, text.index(value), len(text))
    assert text[start:end] == trimmed


def test_an_outside_bias_proposes_more_spans(model: TaggerModel, gazetteer: Gazetteer) -> None:
    text = "Please forward the Lindqvist file to Okafor before the Tuesday meeting in Room 4."
    plain = list(PiiTagger(model, gazetteer).find(text))
    assert PiiTagger(model, gazetteer).outside_bias == 0.0  # the shipped artifact carries no bias
    biased = list(PiiTagger(model, gazetteer, outside_bias=60.0).find(text))
    assert len(biased) > len(plain)
