"""Question drift (`gengate.outer.drift`): the energy-distance test, its false-positive rate and power, and topics.

The statistical tests run on synthetic unit vectors (Gaussian clusters on the sphere) and need only NumPy. The
end-to-end tests embed real question text with the MiniLM encoder (`make models`), as production would: public
questions from ../shared/datasets (SciFact claims, Docugami SEC 10-Q questions) and the HR, expense and VPN
questions below, written for these tests. In CI (GENGATE_REQUIRE_SERVICES set) a missing model or dataset fails
those tests instead of skipping them.
"""

from __future__ import annotations

import csv
import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from gengate.embed.minilm import MiniLMEncoder
from gengate.outer.drift import DriftOptions, question_drift, question_drift_from_texts

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

HR_LEAVE = [
    "How many days of annual leave do I get per year?",
    "Can I carry over unused vacation days into next year?",
    "What is the parental leave policy for new fathers?",
    "How do I request sick leave in the HR portal?",
    "Do I need a doctor's note if I'm off sick for three days?",
    "How much maternity leave am I entitled to?",
    "Is bereavement leave paid, and how many days is it?",
    "Can I take unpaid leave to care for a family member?",
    "What happens to my accrued holiday if I resign?",
    "How far in advance must I book my vacation?",
    "Who approves my time-off request when my manager is away?",
    "Are public holidays counted as part of my annual leave allowance?",
    "Can part-time employees take parental leave?",
    "How do I report an absence when I wake up sick?",
    "What is the policy on compassionate leave after a death in the family?",
    "Can I split my paternity leave into two blocks?",
    "Do I keep accruing vacation while on maternity leave?",
    "How many sick days can I take before my pay is reduced?",
    "Is there paid leave for jury duty?",
    "Can I buy extra holiday days through salary sacrifice?",
    "What is the process for requesting a sabbatical?",
    "How do I cancel a leave request that was already approved?",
    "Does the company offer leave for medical appointments?",
    "Can my manager refuse my annual leave request?",
    "What is the notice period for taking adoption leave?",
    "How is holiday entitlement calculated for someone who joined mid-year?",
    "Are we allowed to take leave during the end-of-year freeze?",
    "How do I return to work after long-term sickness absence?",
    "What is the phased return policy after parental leave?",
    "Can I take time off to volunteer?",
    "Is there a limit on how many consecutive weeks of vacation I can take?",
    "How does shared parental leave work between two parents?",
    "Do I get extra annual leave days for long service?",
    "What counts as an authorised absence?",
    "Can I take leave for a religious holiday that is not a public holiday?",
    "How do I check my remaining holiday balance?",
    "Is time off in lieu given for working on a weekend?",
    "What happens if I fall ill while on vacation?",
    "Can I take emergency leave for childcare problems?",
    "How long can I stay on unpaid leave before my contract is affected?",
    "Do contractors get paid holiday?",
    "Is there a special leave policy for employees going through IVF?",
    "Can I work from another country during my annual leave?",
    "Who do I contact about a mistake in my leave balance?",
    "Does sick leave affect my annual bonus?",
    "How many days of carer's leave are available each year?",
    "Can I take half days of annual leave?",
    "Is there paid leave for military reserve training?",
    "What is the policy for leave during the probation period?",
    "How do I apply for a career break?",
    "Are mental health days treated as sick leave?",
    "What documents do I need to submit for adoption leave?",
    "Can I extend my maternity leave with unpaid time?",
    "How do I record a dentist appointment in the absence system?",
    "Do I get time off for moving house?",
    "What is the rule for taking leave across two leave years?",
    "Is my vacation pay based on my basic salary or including overtime?",
    "Can my unused sick days be paid out when I leave the company?",
    "How do I take time off for my wedding?",
    "Is there a policy for leave due to domestic abuse?",
    "Can I take annual leave during my notice period?",
    "How do I tell my manager I need time off for surgery?",
    "What is the minimum number of days I must take off in a row each year?",
    "Are employees entitled to paid leave on their birthday?",
    "How do I request leave for a child's school event?",
    "Does the company top up statutory maternity pay?",
    "What is the sick pay policy for employees in their first year?",
    "Can I take unpaid parental leave until my child turns five?",
    "How many days can I be absent without a medical certificate?",
    "What is the procedure if my leave request overlaps with a colleague's?",
    "Do weekends in the middle of my vacation count against my allowance?",
    "How is annual leave handled for employees on a four-day week?",
    "Can I take paternity leave if my partner gives birth abroad?",
    "Is there a policy for time off to attend a court hearing as a witness?",
    "What happens to my leave if the company closes over the holidays?",
    "How do I apply for reduced hours after returning from maternity leave?",
    "Can I use annual leave to cover a sick child?",
    "How many weeks of adoption leave are paid at full salary?",
    "What is the policy on leave for gender transition?",
    "Are keeping-in-touch days paid during parental leave?",
    "How do I get my sick leave approved retroactively?",
    "Is there a cap on the number of leave days I can carry forward?",
    "What is the difference between special leave and unpaid leave?",
    "Can temporary staff take bereavement leave?",
    "How do I request time off for a blood donation appointment?",
    "What should I do if my manager hasn't answered my holiday request?",
    "Can I cancel my vacation and get the days back if I'm recalled to work?",
    "Is there a waiting period before new hires can take annual leave?",
    "How much notice do I need to give before starting paternity leave?",
    "Do I get paid leave for a miscarriage?",
    "What leave am I entitled to when my child is in hospital?",
    "How do I log a half day of sickness?",
    "Can leave be taken in hours rather than days?",
    "Who do I notify when I need to extend my sick leave?",
    "Are there any blackout periods when vacation cannot be booked?",
    "Can I donate my unused leave days to a colleague?",
    "What is the company's policy on grandparents' leave?",
    "Does parental leave reset if I have another child?",
    "How is sick leave recorded for someone working night shifts?",
    "Do I need HR approval for more than two weeks of annual leave?",
]
EXPENSES = [
    "How do I submit an expense claim for a client dinner?",
    "What is the deadline for filing travel expenses each month?",
    "Can I get reimbursed for a taxi home after working late?",
    "What receipts do I need to attach to an expense report?",
    "Is there a daily meal allowance when travelling for work?",
    "How long does it take for reimbursements to be paid into my account?",
    "Can I expense a home office chair?",
    "Who approves expense claims above 500 euros?",
    "How do I claim mileage for using my own car on a business trip?",
    "Are hotel minibar charges reimbursable?",
    "What should I do if I lost the receipt for a business purchase?",
    "Can I be reimbursed for a conference ticket I paid for myself?",
    "How do I get a corporate credit card?",
    "Is alcohol covered when entertaining customers?",
    "What exchange rate is used for expenses paid in foreign currency?",
    "Why was my expense report rejected?",
    "Can I claim the cost of a train upgrade to first class?",
    "Are internet bills reimbursed for remote workers?",
    "How do I split a shared restaurant bill across several expense claims?",
    "Is there a limit on hotel costs per night in London?",
    "Can I get an advance for travel costs before a long trip?",
    "Are parking fees at the airport reimbursable?",
]
VPN = [
    "How do I set up the VPN on my new laptop?",
    "The VPN client keeps disconnecting every few minutes, what should I do?",
    "Which VPN server should I connect to when I'm in Asia?",
    "How do I install the VPN app on my phone?",
    "Why can't I reach internal sites even though the VPN says connected?",
    "Do I need to be on the VPN to access the file shares from home?",
    "My VPN login fails with an authentication error after the password change.",
    "How do I configure split tunnelling on the corporate VPN?",
    "Is the VPN required when using hotel Wi-Fi?",
    "The VPN certificate expired, how do I renew it?",
    "Can I use the VPN on a personal computer?",
    "How do I connect to the VPN with two-factor authentication?",
    "The VPN is very slow when I join video calls, how can I fix it?",
    "Where do I download the latest VPN client for macOS?",
    "How do I reset my VPN token?",
    "Why does the VPN block my home printer?",
    "How do I check whether my VPN connection is active?",
    "Can I stay connected to the VPN overnight?",
    "What ports need to be open for the VPN to work from a client site?",
    "The VPN client won't start after the latest Windows update.",
]


# --- synthetic embeddings ---------------------------------------------------------------------------------------


def unit_vectors(rng: np.random.Generator, count: int, dimension: int = 32) -> np.ndarray:
    x = rng.standard_normal((count, dimension))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def cloud(rng: np.random.Generator, centres: np.ndarray, count: int, spread: float = 1.0) -> np.ndarray:
    """`count` unit vectors scattered around centres picked at random: questions on a few subjects."""
    picked = centres[rng.integers(len(centres), size=count)]
    x = picked + spread * rng.standard_normal(picked.shape) / np.sqrt(picked.shape[1])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


@pytest.fixture
def centres(rng: np.random.Generator) -> np.ndarray:
    return unit_vectors(rng, 6)  # five subjects of the reference, the sixth is the new one


def test_false_positive_rate_stays_near_alpha_when_nothing_changed(rng, centres) -> None:
    runs = [question_drift(cloud(rng, centres[:5], 80), cloud(rng, centres[:5], 100), seed=i) for i in range(100)]
    rejected = sum(r.p_value is not None and r.p_value < 0.05 for r in runs)
    assert rejected <= 10  # alpha 0.05 of 100 runs is 5, sd ~2.2
    assert sum(r.drifted for r in runs) <= rejected


def test_p_values_are_uniform_under_the_null(rng, centres) -> None:
    p = np.array([question_drift(cloud(rng, centres[:5], 40), cloud(rng, centres[:5], 60), seed=i).p_value
                  for i in range(200)], dtype=float)  # fmt: skip
    assert 0.35 <= float(np.mean(p < 0.5)) <= 0.65
    assert float(np.mean(p < 0.2)) <= 0.3


def test_detects_a_new_subject_taking_a_third_of_the_questions(rng, centres) -> None:
    found = 0
    for i in range(20):
        recent = np.vstack([cloud(rng, centres[:5], 70), cloud(rng, centres[5:], 30)])
        result = question_drift(cloud(rng, centres[:5], 100), recent, seed=i)
        assert result.status == "ok"
        found += result.drifted
        top = result.topics[0]
        assert sum(m >= 70 for m in top.members) >= 0.8 * top.count  # the biggest topic is the new subject
        assert top.count >= 20
    assert found >= 18


def test_small_shift_in_a_large_sample_is_significant_but_not_drift(rng, centres) -> None:
    recent = np.vstack([cloud(rng, centres[:5], 1850), cloud(rng, centres[5:], 150)])  # 7.5% on a new subject
    result = question_drift(cloud(rng, centres[:5], 2000), recent)
    assert result.p_value is not None and result.p_value < 0.05
    assert result.effect is not None and result.effect < result.options.min_effect
    assert not result.drifted and "small shift" in result.message
    assert result.topics and sum(m >= 1850 for m in result.topics[0].members) >= 140  # still reported as a topic


def test_nothing_new_gives_no_topics(rng, centres) -> None:
    result = question_drift(cloud(rng, centres[:5], 2000), cloud(rng, centres[:5], 2000))
    assert not result.drifted
    assert 0.02 <= result.novel_share <= 0.08  # about the 5th percentile's 5% of outliers, scattered
    assert len(result.topics) <= 1


@pytest.mark.parametrize(
    ("n_reference", "n_recent"),
    [(0, 0), (0, 50), (50, 0), (50, 19), (3, 3)],
)
def test_small_or_empty_samples_report_not_enough_data(rng, n_reference: int, n_recent: int) -> None:
    result = question_drift(unit_vectors(rng, n_reference), unit_vectors(rng, n_recent))
    assert result.status == "not_enough_data" and not result.drifted
    assert result.p_value is None and result.effect is None and result.topics == ()
    assert "not enough data" in result.message and "at least 20" in result.message
    json.dumps(result.to_dict())


def test_empty_lists_are_not_enough_data_too() -> None:
    assert question_drift(np.array([]), np.zeros((0, 384))).status == "not_enough_data"


def test_large_inputs_are_subsampled_with_indices_into_the_input(rng, centres) -> None:
    recent = np.vstack([cloud(rng, centres[:5], 2100), cloud(rng, centres[5:], 900)])
    result = question_drift(cloud(rng, centres[:5], 2500), recent, max_per_side=600)
    assert result.subsampled
    assert (result.n_reference, result.n_recent, result.reference_used, result.recent_used) == (2500, 3000, 600, 600)
    assert result.drifted
    top = result.topics[0]
    assert 150 <= top.count <= 220 and abs(top.share - top.count / 600) < 1e-12
    assert sum(m >= 2100 for m in top.members) >= 0.9 * top.count  # positions in the 3,000 given, not the 600


def test_same_seed_gives_the_same_result_and_json(rng, centres) -> None:
    reference = cloud(rng, centres[:5], 300)
    recent = np.vstack([cloud(rng, centres[:5], 200), cloud(rng, centres[5:], 60)])
    first, second = question_drift(reference, recent, seed=7), question_drift(reference, recent, seed=7)
    assert first == second
    data = json.loads(json.dumps(first.to_dict()))
    assert data["status"] == "ok" and data["options"]["seed"] == 7 and data["topics"][0]["count"] >= 50


def test_rows_need_not_be_exactly_unit_length(rng, centres) -> None:
    reference, recent = cloud(rng, centres[:5], 100), cloud(rng, centres, 100)
    scaled = question_drift(reference * 3.0, recent * 0.5)
    assert scaled.p_value == question_drift(reference, recent).p_value


@pytest.mark.parametrize(
    ("reference", "recent", "texts", "message"),
    [
        ((30, 8), (30, 16), None, "dimensions"),
        ((30, 8), (30,), None, "2-D"),
        ((30, 8), (30, 8), 29, "recent_texts has 29 texts for 30"),
    ],
)
def test_malformed_input_is_rejected(rng, reference, recent, texts, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        question_drift(
            rng.standard_normal(reference),
            rng.standard_normal(recent),
            recent_texts=["q"] * texts if texts is not None else None,
        )


def test_non_finite_embeddings_are_rejected(rng) -> None:
    recent = unit_vectors(rng, 30)
    recent[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        question_drift(unit_vectors(rng, 30), recent)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="alpha"):
        DriftOptions(alpha=1.5)
    with pytest.raises(ValueError, match="min_samples"):
        DriftOptions(min_samples=1)


class HashedWords:
    """A fake encoder (hashed bag of words, unit length) that records how many texts it was asked to embed."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        out = np.zeros((len(texts), 256))
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, zlib.crc32(word.encode()) % 256] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def test_texts_are_subsampled_before_embedding_and_match_the_array_path() -> None:
    reference = [f"how many days of leave do I get in year {i}" for i in range(300)]
    recent = [f"how do I set up the vpn on laptop {i}" for i in range(250)]
    encoder = HashedWords()
    result = question_drift_from_texts(reference, recent, encoder, max_per_side=100)
    assert sorted(encoder.calls) == [100, 100]
    direct = question_drift(encoder(reference), encoder(recent), reference_texts=reference, recent_texts=recent,
                            max_per_side=100)  # fmt: skip
    assert result == direct
    assert result.drifted and set(result.topics[0].keywords) == {"laptop", "set", "vpn"}


# --- real questions, MiniLM embeddings --------------------------------------------------------------------------


def read_dataset(path: Path) -> Path:
    if not path.is_file():
        require(f"the dataset file ../shared/datasets/{path.relative_to(DATASETS)}", "not found")
    return path


@pytest.fixture(scope="module")
def filing_questions() -> list[str]:
    """The 195 Docugami questions about SEC 10-Q filings (Apple, Amazon, Intel, Microsoft, NVIDIA)."""
    with read_dataset(DATASETS / "docugami-sec10q" / "qna_data.csv").open(encoding="utf-8-sig") as f:
        return [row["Question"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def science_claims() -> list[str]:
    """SciFact's claims, the queries of its retrieval benchmark: 600 of them, fixed."""
    with read_dataset(DATASETS / "scifact" / "queries.jsonl").open(encoding="utf-8") as f:
        claims = [json.loads(line)["text"] for line in f]
    return [claims[i] for i in np.random.default_rng(0).permutation(len(claims))[:600]]


@pytest.fixture(scope="module")
def embedded(encoder: MiniLMEncoder, filing_questions: list[str], science_claims: list[str]) -> dict[str, np.ndarray]:
    sets = {"hr": HR_LEAVE, "expenses": EXPENSES, "vpn": VPN, "filings": filing_questions, "science": science_claims}
    return {name: encoder.encode(texts) for name, texts in sets.items()}


def split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    return order[: count // 2], order[count // 2 :]


@pytest.mark.parametrize("subject", ["hr", "filings", "science"])
def test_random_halves_of_one_question_set_do_not_drift(embedded, subject: str) -> None:
    vectors = embedded[subject]
    results = []
    for seed in range(5):
        first, second = split(len(vectors), seed)
        results.append(question_drift(vectors[first], vectors[second], seed=seed))
    assert all(r.status == "ok" for r in results)
    assert sum(r.p_value is not None and r.p_value >= 0.05 for r in results) >= 4
    assert sum(r.drifted for r in results) <= 1


def pick(texts: Sequence[str], indices: Sequence[int]) -> list[str]:
    return [texts[int(i)] for i in indices]


class Memo:
    """The real encoder, each text embedded once across splits."""

    def __init__(self, encoder: MiniLMEncoder) -> None:
        self.encoder = encoder
        self.vectors: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        self.vectors.update(zip(new, self.encoder.encode(new), strict=True))
        return np.stack([self.vectors[t] for t in texts])


def test_expense_and_vpn_questions_drift_from_an_hr_leave_dataset(encoder: MiniLMEncoder) -> None:
    memo, drifted = Memo(encoder), 0
    for seed in range(5):
        reference_idx, recent_idx = np.split(np.random.default_rng(seed).permutation(len(HR_LEAVE)), [55])
        reference = pick(HR_LEAVE, reference_idx)
        recent = pick(HR_LEAVE, recent_idx) + EXPENSES[:10] + VPN[:9]  # 19 of 64: 30% on subjects the dataset lacks
        result = question_drift_from_texts(reference, recent, memo, seed=seed)
        drifted += result.drifted
        by_keyword = {t.keywords[0]: t for t in result.topics if t.keywords}
        assert {"vpn", "expense"} <= set(by_keyword), result.message
        vpn, expense = by_keyword["vpn"], by_keyword["expense"]
        assert set(vpn.representatives) <= set(VPN[:9]) and len(vpn.representatives) == 3
        assert set(expense.representatives) <= set(EXPENSES[:10]) and len(expense.representatives) == 3
        assert all(m >= 45 for m in vpn.members + expense.members)  # no HR question among them
        assert vpn.count + expense.count >= 14
        assert [t.count for t in result.topics[:2]] == sorted([vpn.count, expense.count], reverse=True)
    assert drifted >= 4


def test_filing_questions_drift_from_a_science_claims_dataset(embedded, filing_questions, science_claims) -> None:
    science, filings = embedded["science"], embedded["filings"]
    recent = np.vstack([science[300:510], filings[:90]])  # 90 of 300: 30% on finance
    result = question_drift(
        science[:300], recent, reference_texts=science_claims[:300],
        recent_texts=science_claims[300:510] + filing_questions[:90],
    )  # fmt: skip
    assert result.drifted, result.message
    top = result.topics[0]
    assert top.count >= 60 and all(m >= 210 for m in top.members)
    assert set(top.representatives) <= set(filing_questions)
    assert {"apple", "10-q", "quarters", "reported"} & set(top.keywords)
    assert result.novel_share > 0.25
