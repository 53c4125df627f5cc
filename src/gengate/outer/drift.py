"""Question drift: are recent production questions still the kind the evaluation dataset covers?

Owns the pure comparison of two sets of unit-length question embeddings — the evaluation dataset (reference) and
recent production traffic (recent):

- a two-sample test: the energy distance between the two samples with a permutation p-value, and as effect size
  the homogeneity coefficient H = E / (2·E|X−Y|) (Rizzo & Székely), which is 0 when the samples are alike and
  at most 1, whatever the encoder's scale. `drifted` needs both p < alpha and H ≥ min_effect, so a huge sample
  does not alarm on a trivial shift;
- new topics: recent questions whose nearest reference question is less similar than the reference's own
  nearest-neighbour similarities usually are (below their `novelty_percentile`), grouped by leader clustering,
  each with its count, share, representative questions and keywords.

Must not: embed text itself (`question_drift_from_texts` takes the encoder as a callable), read logs or datasets,
or touch the store. Large inputs are subsampled to `max_per_side` with a fixed seed, and the result says so.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, TypedDict, Unpack

import numpy as np
import numpy.typing as npt

__all__ = [
    "DriftOptions",
    "DriftParams",
    "DriftResult",
    "Status",
    "Topic",
    "question_drift",
    "question_drift_from_texts",
]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Status = Literal["ok", "not_enough_data"]

_PERMUTATION_CHUNK = 64  # label vectors per matrix product: bounds memory at N x 64 floats
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
_STOPWORDS = frozenset(
    "a about above after again all also am an and any are as at be because been before being between both but by "  # noqa: SIM905
    "can could did do does doing done during each else even ever every few for from get gets getting give go "
    "going got had has have having he her here hers him his how however i if in into is it its itself just let "
    "like many may me might more most much must my need needs no nor not now of off on once one only or other "
    "our ours out over own per please same shall she should so some still such than that the their theirs them "
    "then there these they this those through to too under until up upon us use used using very via want was "
    "we were what whats when where whether which while who whom whose why will with within without would yes "
    "yet you your yours".split()
)


@dataclass(frozen=True, slots=True)
class DriftOptions:
    """How the comparison is run; every field has a default, and the result records the options used."""

    permutations: int = 200  # p-value resolution is 1 / (permutations + 1)
    seed: int = 0
    alpha: float = 0.05
    # H grows with the square of the share that moved: with MiniLM, a subject unrelated to the reference taking
    # 30% of the questions gives about 0.01-0.015, an eighth about 0.002, a twentieth about 0.0003.
    min_effect: float = 0.002
    min_samples: int = 20  # per side; fewer gives status "not_enough_data"
    max_per_side: int = 2000
    novelty_percentile: float = 5.0
    topic_similarity: float = 0.35  # cosine to a topic's leader question (MiniLM: same subject, other wording)
    min_topic_size: int = 3
    min_topic_share: float = 0.01  # of the recent questions compared: a few outliers in a big sample are no topic

    def __post_init__(self) -> None:
        if self.permutations < 1 or self.min_samples < 2 or self.max_per_side < self.min_samples:
            raise ValueError("need permutations >= 1, min_samples >= 2 and max_per_side >= min_samples")
        if not 0 < self.alpha < 1 or self.min_effect < 0 or not 0 <= self.novelty_percentile <= 100:
            raise ValueError("need 0 < alpha < 1, min_effect >= 0 and 0 <= novelty_percentile <= 100")
        if not -1 <= self.topic_similarity <= 1 or self.min_topic_size < 1 or not 0 <= self.min_topic_share <= 1:
            raise ValueError("need -1 <= topic_similarity <= 1, min_topic_size >= 1 and 0 <= min_topic_share <= 1")


class DriftParams(TypedDict, total=False):
    """`DriftOptions` fields as keyword arguments (see there for the defaults)."""

    permutations: int
    seed: int
    alpha: float
    min_effect: float
    min_samples: int
    max_per_side: int
    novelty_percentile: float
    topic_similarity: float
    min_topic_size: int
    min_topic_share: float


@dataclass(frozen=True, slots=True)
class Topic:
    """A group of recent questions unlike every reference question.

    `members` and `representative_indices` index the recent input as given; `share` is of the recent questions
    compared. `representatives` (closest to the topic's centroid) and `keywords` are empty without texts.
    """

    count: int
    share: float
    keywords: tuple[str, ...]
    representatives: tuple[str, ...]
    representative_indices: tuple[int, ...]
    members: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """The topic as JSON-able data."""
        return {
            "count": self.count,
            "share": self.share,
            "keywords": list(self.keywords),
            "representatives": list(self.representatives),
            "representative_indices": list(self.representative_indices),
            "members": list(self.members),
        }


@dataclass(frozen=True, slots=True)
class DriftResult:
    """The verdict, the test behind it and the new topics.

    `statistic` is the energy distance, `effect` the homogeneity coefficient H in [0, 1] (both None, like
    `p_value`, when status is "not_enough_data"). `reference_used`/`recent_used` are the sample sizes compared,
    smaller than `n_reference`/`n_recent` when `subsampled`. `novel_count` counts recent questions below
    `novelty_threshold` (cosine to their nearest reference question); about `novelty_percentile`% of them is
    expected without drift. `unclustered` novel questions fit no topic (a topic needs `min_topic_size` questions
    and `min_topic_share` of the recent ones).
    """

    status: Status
    drifted: bool
    message: str
    p_value: float | None
    statistic: float | None
    effect: float | None
    n_reference: int
    n_recent: int
    reference_used: int
    recent_used: int
    subsampled: bool
    novelty_threshold: float | None
    novel_count: int
    novel_share: float
    unclustered: int
    topics: tuple[Topic, ...]
    options: DriftOptions

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-able data (`json.dumps` takes it as is)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("topics", "options")}
        out["topics"] = [t.to_dict() for t in self.topics]
        out["options"] = asdict(self.options)
        return out


def question_drift(
    reference: np.ndarray,
    recent: np.ndarray,
    *,
    reference_texts: Sequence[str] | None = None,
    recent_texts: Sequence[str] | None = None,
    **options: Unpack[DriftParams],
) -> DriftResult:
    """Compare recent question embeddings with the reference's: `[n, d]` arrays of (near) unit-length rows.

    Texts, one per row, are optional: they give topics their representatives and keywords. Options are the
    `DriftOptions` fields (`permutations`, `seed`, `alpha`, `min_effect`, ...). Raises ValueError on malformed
    input (not 2-D, different widths, non-finite values, texts of the wrong length), never on small samples.
    """
    opts = DriftOptions(**options)
    ref, rec = _matrix(reference, "reference"), _matrix(recent, "recent")
    if ref.shape[0] and rec.shape[0] and ref.shape[1] != rec.shape[1]:
        raise ValueError(f"reference has {ref.shape[1]} dimensions, recent has {rec.shape[1]}")
    _check_texts(reference_texts, len(ref), "reference")
    _check_texts(recent_texts, len(rec), "recent")
    ref_idx = _sample(len(ref), opts, side=0)
    rec_idx = _sample(len(rec), opts, side=1)
    return _compare(
        _unit(ref[ref_idx]),
        _unit(rec[rec_idx]),
        ref_idx,
        rec_idx,
        (len(ref), len(rec)),
        _pick(reference_texts, ref_idx),
        _pick(recent_texts, rec_idx),
        opts,
    )


def question_drift_from_texts(
    reference: Sequence[str],
    recent: Sequence[str],
    encode: Callable[[list[str]], np.ndarray],
    **options: Unpack[DriftParams],
) -> DriftResult:
    """Embed both sides with `encode` (texts -> `[n, d]` rows) and compare them as `question_drift` does.

    Subsampling happens before embedding (same seed, so the same questions as `question_drift` would keep), so
    a month of traffic costs at most `max_per_side` encodings per side.
    """
    opts = DriftOptions(**options)
    ref_idx = _sample(len(reference), opts, side=0)
    rec_idx = _sample(len(recent), opts, side=1)
    ref_texts, rec_texts = _pick(reference, ref_idx) or [], _pick(recent, rec_idx) or []
    ref = _matrix(encode(ref_texts), "reference") if ref_texts else np.zeros((0, 0), np.float32)
    rec = _matrix(encode(rec_texts), "recent") if rec_texts else np.zeros((0, 0), np.float32)
    if len(ref) != len(ref_texts) or len(rec) != len(rec_texts):
        raise ValueError("the encoder returned a different number of rows than texts")
    if ref.shape[0] and rec.shape[0] and ref.shape[1] != rec.shape[1]:
        raise ValueError("the encoder returned rows of different widths")
    return _compare(_unit(ref), _unit(rec), ref_idx, rec_idx, (len(reference), len(recent)), ref_texts, rec_texts, opts)


# --- the comparison ---------------------------------------------------------------------------------------------


def _compare(
    ref: F32,
    rec: F32,
    ref_idx: I64,
    rec_idx: I64,
    totals: tuple[int, int],
    ref_texts: list[str] | None,
    rec_texts: list[str] | None,
    opts: DriftOptions,
) -> DriftResult:
    n_ref, n_rec = totals
    base: dict[str, Any] = {
        "n_reference": n_ref,
        "n_recent": n_rec,
        "reference_used": len(ref),
        "recent_used": len(rec),
        "subsampled": len(ref) < n_ref or len(rec) < n_rec,
        "options": opts,
    }
    if len(ref) < opts.min_samples or len(rec) < opts.min_samples:
        return DriftResult(
            status="not_enough_data",
            drifted=False,
            message=f"not enough data: {n_ref} reference and {n_rec} recent questions, "
            f"need at least {opts.min_samples} on each side",
            p_value=None,
            statistic=None,
            effect=None,
            novelty_threshold=None,
            novel_count=0,
            novel_share=0.0,
            unclustered=0,
            topics=(),
            **base,
        )
    rng = np.random.default_rng([opts.seed, 2])
    statistic, effect, p_value = _energy_test(ref, rec, opts.permutations, rng)
    threshold, novel = _novel(ref, rec, opts.novelty_percentile)
    topics, unclustered = _topics(rec, novel, rec_idx, ref_texts, rec_texts, opts)
    drifted = p_value < opts.alpha and effect >= opts.min_effect
    if drifted:
        verdict = "drifted"
    elif p_value < opts.alpha:
        verdict = f"a significant but small shift (effect below {opts.min_effect:g})"
    else:
        verdict = "no significant drift"
    message = (
        f"{verdict}: p={p_value:.3g}, effect={effect:.3g}; {int(novel.sum())} of {len(rec)} recent questions "
        f"are unlike the reference ({len(topics)} new topic{'s' if len(topics) != 1 else ''})"
    )
    return DriftResult(
        status="ok",
        drifted=bool(drifted),
        message=message,
        p_value=p_value,
        statistic=statistic,
        effect=effect,
        novelty_threshold=threshold,
        novel_count=int(novel.sum()),
        novel_share=float(novel.mean()),
        unclustered=unclustered,
        topics=topics,
        **base,
    )


def _energy_test(ref: F32, rec: F32, permutations: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Energy distance (U-statistic form), homogeneity coefficient H and permutation p-value.

    With the pooled distance matrix D and a 0/1 vector z marking one sample, every within/between sum follows
    from q = zᵀDz and the row sums of D, so a block of permutations is one matrix product.
    """
    n, m = len(ref), len(rec)
    pooled = np.vstack([ref, rec])
    distances = pooled @ pooled.T
    np.multiply(distances, -2.0, out=distances)
    distances += 2.0  # |x - y|² = 2 - 2·cos for unit vectors
    np.maximum(distances, 0.0, out=distances)
    np.sqrt(distances, out=distances)
    np.fill_diagonal(distances, 0.0)
    rows = distances.sum(1, dtype=np.float64)
    total = float(rows.sum())

    def energy(labels: F32) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        within_rec = np.einsum("ik,ik->k", labels, distances @ labels, dtype=np.float64)
        rec_rows = labels.T.astype(np.float64) @ rows
        between = rec_rows - within_rec
        within_ref = total - 2 * rec_rows + within_rec
        mean_between = between / (n * m)
        stat = 2 * mean_between - within_ref / (n * (n - 1)) - within_rec / (m * (m - 1))
        return stat, mean_between

    observed = np.zeros((n + m, 1), np.float32)
    observed[n:] = 1.0
    stat, mean_between = energy(observed)
    statistic = float(stat[0])
    effect = statistic / (2 * float(mean_between[0])) if mean_between[0] > 0 else 0.0
    exceed = 0
    tolerance = 1e-6 * max(float(mean_between[0]), 1e-12)  # float32 products: treat near-ties as ties
    for start in range(0, permutations, _PERMUTATION_CHUNK):
        size = min(_PERMUTATION_CHUNK, permutations - start)
        labels = np.zeros((n + m, size), np.float32)
        for k in range(size):
            labels[rng.permutation(n + m)[:m], k] = 1.0
        exceed += int((energy(labels)[0] >= statistic - tolerance).sum())
    return statistic, max(effect, 0.0), (1 + exceed) / (1 + permutations)


def _novel(ref: F32, rec: F32, percentile: float) -> tuple[float, npt.NDArray[np.bool_]]:
    """The novelty threshold (a low percentile of each reference question's nearest other reference question)
    and which recent questions fall below it."""
    within = ref @ ref.T
    np.fill_diagonal(within, -np.inf)
    threshold = float(np.percentile(within.max(1), percentile))
    return threshold, (rec @ ref.T).max(1) < threshold


def _topics(
    rec: F32,
    novel: npt.NDArray[np.bool_],
    rec_idx: I64,
    ref_texts: list[str] | None,
    rec_texts: list[str] | None,
    opts: DriftOptions,
) -> tuple[tuple[Topic, ...], int]:
    """Group the novel questions; returns topics sorted by count and how many novel questions fit none."""
    positions = np.flatnonzero(novel)
    if not len(positions):
        return (), 0
    vectors = rec[positions]
    min_size = max(opts.min_topic_size, math.ceil(opts.min_topic_share * len(rec)))
    groups = _leader_clusters(vectors, opts.topic_similarity, min_size)
    background = ref_texts if ref_texts is not None else rec_texts
    topics = []
    for group in groups:
        members = positions[group]
        centroid = vectors[group].mean(0)
        closeness = vectors[group] @ (centroid / max(float(np.linalg.norm(centroid)), 1e-12))
        order = members[np.argsort(-closeness, kind="stable")]
        rep_positions = _distinct(order, rec_texts, 3)
        topics.append(
            Topic(
                count=len(members),
                share=len(members) / len(rec),
                keywords=_keywords([rec_texts[i] for i in members], background) if rec_texts and background else (),
                representatives=tuple(rec_texts[i] for i in rep_positions) if rec_texts else (),
                representative_indices=tuple(int(rec_idx[i]) for i in rep_positions),
                members=tuple(sorted(int(rec_idx[i]) for i in members)),
            )
        )
    topics.sort(key=lambda t: (-t.count, t.members[0]))
    return tuple(topics), len(positions) - sum(t.count for t in topics)


def _leader_clusters(vectors: F32, similarity: float, min_size: int) -> list[I64]:
    """Leader (Taylor–Butina) clustering: the question with the most neighbours (cosine ≥ similarity) leads a
    group of its still-free neighbours, and so on down the neighbour counts. Groups smaller than `min_size` are
    dissolved, their questions joining the most similar kept group's centroid if close enough."""
    adjacent = (vectors @ vectors.T) >= similarity
    free = np.ones(len(vectors), bool)
    groups: list[I64] = []
    for leader in np.argsort(-adjacent.sum(1), kind="stable"):
        if free[leader]:
            group = np.flatnonzero(adjacent[leader] & free)
            free[group] = False
            groups.append(group)
    kept = [g for g in groups if len(g) >= min_size]
    loose = np.concatenate([g for g in groups if len(g) < min_size] or [np.zeros(0, np.int64)])
    if kept and len(loose):
        centroids = np.stack([vectors[g].mean(0) for g in kept])
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        scores = vectors[loose] @ centroids.T
        best = scores.argmax(1)
        join = scores[np.arange(len(loose)), best] >= similarity
        extra = [loose[join & (best == k)] for k in range(len(kept))]
        kept = [np.sort(np.concatenate([g, e])) for g, e in zip(kept, extra, strict=True)]
    return kept


def _distinct(order: I64, texts: list[str] | None, k: int) -> list[int]:
    """The first k positions of `order` whose texts differ (case and spacing aside)."""
    chosen: list[int] = []
    seen: set[str] = set()
    for i in order:
        key = " ".join(texts[i].lower().split()) if texts else str(i)
        if key not in seen:
            seen.add(key)
            chosen.append(int(i))
            if len(chosen) == k:
                break
    return chosen


def _keywords(texts: Sequence[str], background: Sequence[str], k: int = 5) -> tuple[str, ...]:
    """Words frequent in the topic and rare in the background: document frequency p in the topic weighted by
    log(p / background document frequency), which ranks "vpn" over "leave" when the reference is about leave."""
    topic = Counter(w for t in texts for w in _words(t))
    base = Counter(w for t in background for w in _words(t))
    floor = 2 if len(texts) >= 3 else 1  # a keyword is shared by several questions, not one question's quirk
    scored = []
    for word, count in topic.items():
        if count < floor:
            continue
        p = count / len(texts)
        q = (base[word] + 0.5) / (len(background) + 1)
        if p > q:
            scored.append((-p * math.log(p / q), word))
    return tuple(word for _, word in sorted(scored)[:k])


def _words(text: str) -> set[str]:
    words = set()
    for word in _WORD.findall(text.lower().replace("’", "'")):
        word = word.removesuffix("'s")
        if len(word) > 1 and not word.isdigit() and word not in _STOPWORDS:
            words.add(word)
    return words


# --- input handling ---------------------------------------------------------------------------------------------


def _matrix(values: np.ndarray, name: str) -> F32:
    array = np.asarray(values, dtype=np.float32)
    if array.size == 0:
        return np.zeros((0, array.shape[-1] if array.ndim == 2 else 0), np.float32)
    if array.ndim != 2:
        raise ValueError(f"{name} embeddings must be a 2-D array [n, dimension], got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} embeddings contain NaN or infinite values")
    return array


def _unit(array: F32) -> F32:
    # Callers pass unit-length rows already; renormalising costs little and keeps cos = dot exact.
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return (array / np.maximum(norms, 1e-12)).astype(np.float32)  # type: ignore[no-any-return]


def _check_texts(texts: Sequence[str] | None, rows: int, name: str) -> None:
    if texts is not None and len(texts) != rows:
        raise ValueError(f"{name}_texts has {len(texts)} texts for {rows} embeddings")


def _sample(n: int, opts: DriftOptions, *, side: int) -> I64:
    """All of 0..n-1, or `max_per_side` of them chosen with a seed per side (sorted, so order is kept)."""
    if n <= opts.max_per_side:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([opts.seed, side])
    return np.sort(rng.choice(n, opts.max_per_side, replace=False)).astype(np.int64)


def _pick(texts: Sequence[str] | None, indices: I64) -> list[str] | None:
    return None if texts is None else [texts[int(i)] for i in indices]
