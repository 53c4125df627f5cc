"""Evaluation metrics: deterministic checks, retrieval ranking, offline grounding, the LLM judge and the registry."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gengate.eval.calibrate import spearman
from gengate.eval.metrics import (
    AnyMetric,
    EvalCase,
    MetricKind,
    MetricRegistry,
    MetricResult,
    Observation,
    is_async_metric,
    score_trial,
)
from gengate.eval.metrics.deterministic import is_refusal, normalize_answer, strip_citations, token_f1
from gengate.eval.metrics.grounding import AnswerRelevance, Faithfulness, extract_claims
from gengate.eval.metrics.judge import (
    FAITHFULNESS_PROMPT_VERSION,
    RELEVANCE_PROMPT_VERSION,
    JudgeFaithfulness,
    JudgeRelevance,
    Message,
    parse_score,
)
from gengate.eval.metrics.retrieval import mrr_at_k, ndcg_at_k, precision_at_k, recall_at_k

MTRAG = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mtrag-human-evals"
NO_ANSWER = "I could not find anything about that in the documents you have access to."
BLOCKED = "I'm sorry, but I can't help with that request. (reference: req-42)"


@pytest.fixture(scope="module")
def registry() -> MetricRegistry:
    return MetricRegistry(load_plugins=False)


def run(metric: AnyMetric, case: EvalCase, obs: Observation) -> MetricResult:
    return asyncio.run(score_trial(metric, case, obs))


def case(**kwargs: Any) -> EvalCase:
    kwargs.setdefault("case_id", "c1")
    kwargs.setdefault("question", "What is the capital of France?")
    return EvalCase(**kwargs)


# --- deterministic ---------------------------------------------------------------------------------------------

DETERMINISTIC = [
    # metric, options, case fields, observation fields, expected value, expected passed
    ("exact_match", {}, {"reference": "Paris"}, {"answer": " Paris\n"}, 1.0, True),
    ("exact_match", {}, {"reference": "Paris"}, {"answer": "paris"}, 0.0, False),
    ("exact_match", {}, {}, {"answer": "Paris"}, None, None),
    ("exact_match", {}, {"reference": "Paris"}, {"answer": "Paris", "error": "timeout"}, 0.0, False),
    ("normalized_match", {}, {"reference": "Paris"}, {"answer": "The paris!"}, 1.0, True),
    ("normalized_match", {}, {"reference": "an apple pie"}, {"answer": "Apple  pie."}, 1.0, True),
    ("normalized_match", {}, {"reference": "Paris"}, {"answer": "Paris, France"}, 0.0, False),
    ("contains", {}, {"required_facts": ("Paris", "Seine")}, {"answer": "PARIS lies on the seine."}, 1.0, True),
    ("contains", {}, {"required_facts": ("Paris", "Seine")}, {"answer": "Paris is big."}, 0.5, False),
    ("contains", {"strings": ["capital  city"]}, {}, {"answer": "the Capital City"}, 1.0, True),
    ("contains", {}, {}, {"answer": "anything"}, None, None),
    ("regex", {"pattern": r"\b\d{4}\b"}, {}, {"answer": "Completed in 1889."}, 1.0, True),
    ("regex", {"pattern": "PARIS"}, {}, {"answer": "paris"}, 1.0, True),
    ("regex", {"pattern": "PARIS", "ignore_case": False}, {}, {"answer": "paris"}, 0.0, False),
    ("token_f1", {}, {"reference": "the cat sat on the mat"}, {"answer": "A cat sat on a mat."}, 1.0, None),
    ("token_f1", {}, {"reference": "cat sat down"}, {"answer": "the cat sat"}, 0.8, None),
    ("token_f1", {"threshold": 0.9}, {"reference": "cat sat down"}, {"answer": "cat sat"}, 0.8, False),
    ("token_f1", {}, {"reference": "dog"}, {"answer": "cat"}, 0.0, None),
    ("json_valid", {}, {}, {"answer": '{"a": 1}'}, 1.0, True),
    ("json_valid", {}, {}, {"answer": '```json\n{"a": 1}\n```'}, 1.0, True),
    ("json_valid", {"allow_fence": False}, {}, {"answer": '```json\n{"a": 1}\n```'}, 0.0, False),
    ("json_valid", {}, {}, {"answer": "{a: 1}"}, 0.0, False),
    ("json_valid", {"schema": {"type": "object"}}, {}, {"answer": "[1, 2]"}, 0.0, False),
    (
        "json_valid",
        {"schema": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "required": ["n"]}},
        {},
        {"answer": '{"n": 3}'},
        1.0,
        True,
    ),
    ("refusal", {}, {}, {"answer": NO_ANSWER}, 1.0, None),
    ("refusal", {"expected": True}, {}, {"answer": NO_ANSWER}, 1.0, True),
    ("refusal", {"expected": True}, {}, {"answer": BLOCKED}, 1.0, True),
    ("refusal", {"expected": True}, {}, {"answer": "", "guard_outcome": "blocked"}, 1.0, True),
    ("refusal", {"expected": True}, {}, {"answer": "Paris is the capital [1]."}, 0.0, False),
    ("refusal", {}, {"metadata": {"expect_refusal": False}}, {"answer": "Paris is the capital."}, 0.0, True),
    ("refusal", {}, {"metadata": {"expect_refusal": False}}, {"answer": "Sorry, I don't know."}, 1.0, False),
    ("refusal", {"expected": True}, {}, {"answer": "The documents do not say. I hope this helps!"}, 1.0, True),
    ("refusal", {"expected": False}, {}, {"answer": "The text does not say, but it is likely Paris."}, 0.0, True),
    ("refusal", {"phrases": ["Ask your manager."]}, {}, {"answer": "Ask your manager."}, 1.0, None),
    ("template_used", {}, {}, {"answer": "x", "template": "blocked"}, 1.0, None),
    ("template_used", {"expected": True}, {}, {"answer": "x"}, 0.0, False),
    ("template_used", {}, {"metadata": {"expected_template": "blocked"}}, {"template": "blocked"}, 1.0, True),
    ("template_used", {"expected": "blocked"}, {}, {"template": "pricing"}, 1.0, False),
    ("template_used", {"expected": False}, {}, {"answer": "free text"}, 0.0, True),
    ("guard_outcome", {"expected": "blocked"}, {}, {"guard_outcome": "blocked"}, 1.0, True),
    ("guard_outcome", {}, {"metadata": {"expected_outcome": "no_answer"}}, {"guard_outcome": "answered"}, 0.0, False),
    ("guard_outcome", {}, {}, {"guard_outcome": "answered"}, None, None),
    ("latency", {}, {}, {"latency_ms": 1234.5}, 1234.5, None),
    ("latency", {"max_ms": 1000}, {}, {"latency_ms": 1234.5}, 1234.5, False),
    ("latency", {}, {}, {}, None, None),
    ("cost", {"max_usd": 0.01}, {}, {"cost_usd": 0.002}, 0.002, True),
    ("cost", {}, {}, {}, None, None),
]


@pytest.mark.parametrize(("name", "options", "case_fields", "obs_fields", "value", "passed"), DETERMINISTIC)
def test_deterministic_metric_table(
    registry: MetricRegistry,
    name: str,
    options: dict[str, Any],
    case_fields: dict[str, Any],
    obs_fields: dict[str, Any],
    value: float | None,
    passed: bool | None,
) -> None:
    metric = registry.build(name, options)
    assert not is_async_metric(metric)
    result = run(metric, case(**case_fields), Observation(**obs_fields))
    assert result.value == pytest.approx(value)
    assert result.passed is passed


def test_latency_and_cost_values_are_marked_unbounded(registry: MetricRegistry) -> None:
    result = run(registry.build("latency"), case(), Observation(latency_ms=2500.0))
    assert result.bounded is False and result.value == 2500.0


def test_bounded_result_outside_unit_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MetricResult(1.5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Paris [1], Lyon [2, 3] and Nice【4†source】.", "Paris, Lyon and Nice."), ("See [doc3].", "See.")],
)
def test_citation_markers_are_stripped(text: str, expected: str) -> None:
    assert strip_citations(text) == expected


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        (NO_ANSWER, True),
        (BLOCKED, True),
        ("I don’t know.", True),
        ("Unfortunately, the provided context does not mention the price.", True),
        ("The answer is not mentioned in the provided documents.", True),
        ("There is no information about that. Let me know if you need anything else!", True),
        ("I am unable to find that.", True),
        ("Sorry, I do not have that information at the moment.", True),
        ("Paris is the capital of France [1].", False),
        ("Unfortunately, the tower closed in 1990.", False),
        ("The documents do mention the price: 20 euros.", False),
        ("The documents do not give the year; however, the tower is 330 m tall.", False),
        ("", False),
    ],
)
def test_refusal_detection(text: str, refused: bool) -> None:
    assert is_refusal(text) is refused


def test_squad_normalisation_and_f1() -> None:
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert token_f1("", "") == 1.0
    assert token_f1("a", "cat") == 0.0  # "a" normalises to nothing


# --- retrieval -----------------------------------------------------------------------------------------------------


def test_ranking_maths_by_hand() -> None:
    ranked = ["d3", "d1", "d7", "d2"]
    relevant = {"d1": 1, "d2": 1, "d9": 1}
    assert recall_at_k(ranked, relevant, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, relevant, 4) == pytest.approx(2 / 3)
    assert precision_at_k(ranked, relevant, 2) == pytest.approx(1 / 2)
    assert precision_at_k(ranked, relevant, 10) == pytest.approx(2 / 10)
    assert mrr_at_k(ranked, relevant, 1) == 0.0
    assert mrr_at_k(ranked, relevant, 4) == pytest.approx(1 / 2)
    # DCG = 1/log2(3) + 1/log2(5); ideal for 3 relevant in the top 4: 1 + 1/log2(3) + 1/log2(4)
    dcg = 1 / np.log2(3) + 1 / np.log2(5)
    assert ndcg_at_k(ranked, relevant, 4) == pytest.approx(dcg / (1 + 1 / np.log2(3) + 0.5))


@pytest.mark.parametrize(
    ("name", "value"),
    [("recall@2", 0.5), ("precision@2", 0.5), ("mrr@3", 0.5), ("ndcg@2", (1 / np.log2(3)) / (1 + 1 / np.log2(3)))],
)
def test_retrieval_metrics_use_gold_ids(registry: MetricRegistry, name: str, value: float) -> None:
    metric = registry.build(name)
    assert metric.name == name
    result = run(metric, case(gold_ids=("a", "b")), Observation(retrieved_ids=("x", "a", "c")))
    assert result.value == pytest.approx(value)


def test_retrieval_metric_without_gold_ids_is_not_applicable(registry: MetricRegistry) -> None:
    result = run(registry.build("recall", {"k": 5}), case(), Observation(retrieved_ids=("a",)))
    assert result.value is None


# --- grounding -----------------------------------------------------------------------------------------------------

TOWER = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. It was designed by the "
    "engineering company of Gustave Eiffel and completed in 1889. The tower is 330 metres tall."
)
MUSEUM = "The Louvre is the world's most-visited museum. It received 8.7 million visitors in 2023."


def faith(answer: str, passages: Sequence[str] = (TOWER, MUSEUM), **options: Any) -> MetricResult:
    return Faithfulness(**options).score(case(), Observation(answer=answer, retrieved_texts=tuple(passages)))


def test_supported_answer_scores_high() -> None:
    result = faith("The Eiffel Tower was completed in 1889 [1]. It is 330 metres tall [1].")
    assert result.value is not None and result.value >= 0.9


def test_contradicting_number_scores_low() -> None:
    result = faith("The Eiffel Tower was completed in 1925 [1].")
    assert result.value is not None and result.value <= 0.25
    assert "1925" in result.detail


def test_unsupported_claim_lowers_the_mean() -> None:
    good = faith("The Eiffel Tower was completed in 1889.")
    mixed = faith("The Eiffel Tower was completed in 1889. Its elevators were built by Otis in Chicago.")
    assert good.value is not None and mixed.value is not None and mixed.value < good.value - 0.2


@pytest.mark.parametrize("answer", [NO_ANSWER, BLOCKED, "Sorry, I do not have that information.", "", "Thanks!"])
def test_refusals_and_empty_answers_are_not_applicable(answer: str) -> None:
    assert faith(answer).value is None


def test_claims_without_context_are_unsupported() -> None:
    result = faith("The Eiffel Tower was completed in 1889.", passages=())
    assert result.value == 0.0 and result.detail.startswith("no context")


def test_claim_extraction_skips_hedges_pleasantries_and_lead_ins() -> None:
    answer = (
        "To keep children safe:\n\n1. **Protective gear**: children wear helmets [1].\n"
        "2. Supervise young children at all times [2][3].\n\n"
        "The documents do not mention age limits, but parks must be fenced. I hope this helps!"
    )
    assert extract_claims(answer) == [
        "Protective gear: children wear helmets.",
        "Supervise young children at all times.",
        "parks must be fenced.",
    ]


@dataclass
class BagOfWordsEncoder:
    """A stand-in sentence encoder: hashed bag-of-words vectors, unit length; counts calls."""

    calls: int = 0
    texts: int = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.texts += len(texts)
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, int(hashlib.sha256(word.encode()).hexdigest(), 16) % 64] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1)


def test_encoder_blends_semantic_support_and_changes_the_version() -> None:
    encoder = BagOfWordsEncoder()
    metric = Faithfulness(encoder=encoder)
    result = metric.score(case(), Observation(answer="The tower is 330 metres tall.", retrieved_texts=(TOWER,)))
    assert encoder.calls == 1 and metric.version != Faithfulness().version
    assert result.value is not None and result.value > 0.8


def test_only_the_lexically_closest_units_are_embedded() -> None:
    filler = " ".join(f"Sentence number {i} talks about gardening and roses." for i in range(30))
    encoder = BagOfWordsEncoder()
    metric = Faithfulness(encoder=encoder, semantic_candidates=3)
    result = metric.score(case(), Observation(answer="The tower is 330 metres tall.", retrieved_texts=(filler, TOWER)))
    assert encoder.texts == 1 + 3 and result.value is not None and result.value > 0.8


def test_answer_relevance_prefers_on_topic_answers() -> None:
    metric = AnswerRelevance(encoder=BagOfWordsEncoder())
    question = case(question="How tall is the Eiffel Tower?")
    on_topic = metric.score(question, Observation(answer="The Eiffel Tower is 330 metres tall."))
    off_topic = metric.score(question, Observation(answer="The Louvre received 8.7 million visitors."))
    assert on_topic.value is not None and off_topic.value is not None and on_topic.value > off_topic.value + 0.3
    assert metric.score(question, Observation(answer=NO_ANSWER)).value is None


def _mtrag_heldout(limit: int) -> list[tuple[float, str, tuple[str, ...]]]:
    data = json.loads((MTRAG / "reference_subset_with_human_evaluations.json").read_text(encoding="utf-8"))
    docs = {d["document_id"]: d["text"] for d in data["documents"]}
    contexts = {t["task_id"]: tuple(docs[c["document_id"]] for c in t["contexts"]) for t in data["tasks"]}
    rows = []
    for e in data["evaluations"]:
        if zlib.crc32(e["task_id"].split("<::>")[0].encode()) % 5 != 0:  # the bench's held-out split
            continue
        ratings = [float(a["value"]) for a in e["annotations"]["faithfulness"].values()]
        rows.append((sum(ratings) / len(ratings), e["model_response"], contexts[e["task_id"]]))
    return rows[::3][:limit]


@pytest.mark.skipif(not MTRAG.is_dir(), reason="mtrag-human-evals dataset not present")
def test_faithfulness_agrees_with_human_ratings_on_mtrag() -> None:
    metric = Faithfulness()
    pairs = []
    for human, answer, passages in _mtrag_heldout(30):
        value = metric.score(case(), Observation(answer=answer, retrieved_texts=passages)).value
        if value is not None:
            pairs.append((value, human))
    assert len(pairs) >= 25
    assert spearman([p[0] for p in pairs], [p[1] for p in pairs]) > 0.2


# --- LLM judge -----------------------------------------------------------------------------------------------------


@dataclass
class FakeJudge:
    """A completion callable that replies with canned text and records what it was sent."""

    reply: str
    sent: list[Sequence[Message]] = field(default_factory=list)

    async def __call__(self, messages: Sequence[Message]) -> str:
        self.sent.append(messages)
        return self.reply


@pytest.mark.parametrize(
    ("reply", "value"),
    [
        ('{"score": 5, "reason": "all supported"}', 1.0),
        ('Sure! {"score": "2", "reason": "one claim unsupported"}', 0.25),
        ("Score: 4", 0.75),
        ("**Rating:** 3", 0.5),
        ("I'd give it 4 out of 5.", 0.75),
        ("8/10", 0.8),
        ("0.9", 0.9),
        ("1", 0.0),
        ("Score: 7", None),
        ('{"score": -1}', None),
        ("The answer looks fine to me.", None),
        ("", None),
    ],
)
def test_judge_reply_parsing(reply: str, value: float | None) -> None:
    assert parse_score(reply).value == pytest.approx(value)


async def test_judge_faithfulness_sends_versioned_prompt_and_scores() -> None:
    judge = FakeJudge('{"score": 4, "reason": "one detail missing"}')
    metric = JudgeFaithfulness(complete=judge)
    obs = Observation(answer="The tower was completed in 1889.", retrieved_texts=(TOWER,))
    result = await metric.ascore(case(question="When was it completed?"), obs)
    assert result.value == pytest.approx(0.75)
    assert result.detail.startswith(FAITHFULNESS_PROMPT_VERSION) and "one detail missing" in result.detail
    assert metric.version == FAITHFULNESS_PROMPT_VERSION and is_async_metric(metric)
    (messages,) = judge.sent
    assert messages[0]["role"] == "system" and "[1] The Eiffel Tower" in messages[1]["content"]
    assert "When was it completed?" in messages[1]["content"]


@pytest.mark.parametrize("reply", ["Score: 9", "no idea", "{'score': }"])
async def test_judge_unusable_reply_gives_none_with_reason(reply: str) -> None:
    result = await JudgeRelevance(complete=FakeJudge(reply)).ascore(case(), Observation(answer="Paris."))
    assert result.value is None and result.detail.startswith(RELEVANCE_PROMPT_VERSION)


async def test_judge_skips_refusals_without_calling_the_model() -> None:
    judge = FakeJudge("5")
    result = await JudgeFaithfulness(complete=judge, threshold=0.5).ascore(case(), Observation(answer=NO_ANSWER))
    assert result.value is None and judge.sent == []


async def test_judge_threshold_sets_passed(registry: MetricRegistry) -> None:
    metric = registry.build("judge_relevance", {"complete": FakeJudge("Score: 2"), "threshold": 0.5})
    result = await score_trial(metric, case(), Observation(answer="Lyon is nice."))
    assert result.value == pytest.approx(0.25) and result.passed is False


# --- registry ------------------------------------------------------------------------------------------------------


def test_registry_rejects_unknown_metric_with_suggestion(registry: MetricRegistry) -> None:
    with pytest.raises(ValueError, match=r"unknown metric 'exact_matc'; did you mean 'exact_match'"):
        registry.build("exact_matc")


def test_registry_rejects_unknown_option_listing_accepted_ones(registry: MetricRegistry) -> None:
    with pytest.raises(
        ValueError, match=r"metric 'regex': unknown option\(s\) patern \(accepted: ignore_case, pattern\)"
    ):
        registry.build("regex", {"patern": "x"})


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("regex", {}, "pattern option is required"),
        ("regex", {"pattern": "("}, "invalid pattern"),
        ("recall", {"k": 0}, "k must be a positive integer"),
        ("ndcg@5", {"k": 3}, "contradicts the name"),
        ("guard_outcome", {"expected": "maybe"}, "expected must be one of"),
        ("faithfulness", {"aggregate": "median"}, "aggregate must be"),
        ("judge_faithfulness", {}, "complete"),
        ("latency", {"max_ms": -1}, "max_ms must be"),
    ],
)
def test_registry_reports_bad_option_values(
    registry: MetricRegistry, name: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        registry.build(name, options)


def test_every_builtin_builds_with_defaults(registry: MetricRegistry) -> None:
    needs: dict[str, dict[str, Any]] = {"regex": {"pattern": "x"}, "judge_faithfulness": {"complete": FakeJudge("5")}}
    needs["judge_relevance"] = needs["judge_faithfulness"]
    for name in registry.names():
        metric = registry.build(name, needs.get(name))
        assert metric.kind in ("score", "pass") and metric.version and metric.name.startswith(name)


@dataclass(frozen=True)
class ShortAnswer:
    """A user metric: passes when the answer has at most `max_words` words."""

    max_words: int = 50
    name: str = field(default="short_answer", init=False)
    version: str = field(default="1", init=False)
    kind: MetricKind = field(default="pass", init=False)

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        return MetricResult.verdict(len(obs.answer.split()) <= self.max_words)


def test_user_metric_registers_through_the_same_path() -> None:
    registry = MetricRegistry(load_plugins=False)
    registry.register("short_answer", ShortAnswer)
    metric = registry.build("short_answer", {"max_words": 2})
    assert run(metric, case(), Observation(answer="one two three")).passed is False
    with pytest.raises(ValueError, match="accepted: max_words"):
        registry.build("short_answer", {"max": 2})
    assert "short_answer" in registry.names() and "exact_match" in registry


def test_registries_are_independent() -> None:
    one, two = MetricRegistry(load_plugins=False), MetricRegistry(load_plugins=False)
    one.register("short_answer", lambda options: ShortAnswer(**options))
    assert "short_answer" in one and "short_answer" not in two


def test_ndcg_counts_a_document_ranked_twice_once() -> None:
    from gengate.eval.metrics.retrieval import ndcg_at_k

    assert ndcg_at_k(["a", "a", "a", "b"], {"a": 1}, k=10) == 1.0
    assert 0.0 < ndcg_at_k(["b", "a", "a"], {"a": 1}, k=10) < 1.0
