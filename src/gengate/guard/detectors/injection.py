"""Prompt-injection and jailbreak detection: a small linear model on numpy, with an optional embedding stage.

Owns the feature hashing (shared with `scripts/train_injection.py`, so training and run time cannot drift),
the artifact format, window scoring and the `InjectionDetector`. It must not import scikit-learn, touch the
network or load anything at import time; the artifact (and the encoder, when asked for) is read once, when a
detector is built.

Stage 1, always: word unigrams and bigrams (CRC-32) and character 3/4/5-grams (a polynomial rolling hash computed
with numpy), hashed into 2**bits buckets, each block scaled by 1/sqrt(its n-gram count), plus the structural rules
of `injection_rules` (present or absent in the window). Two logistic heads: `attack` (injection or jailbreak vs
benign) decides, `jailbreak` (jailbreak vs other injection) only names the finding. Long texts are scored in
overlapping windows in O(1) per window; documents also per sentence.

Stage 2, optional (the cascade): a text whose stage-1 score falls in the stage's uncertain band is embedded with
all-MiniLM-L6-v2 (`gengate.embed`) — the whole prompt, or a document's most suspicious windows — and a second
logistic head on the embedding is combined with the stage-1 logit. Clear cases never pay for the encoder.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, Protocol, Self

import numpy as np
import numpy.typing as npt

from gengate.guard.base import Finding, ScanRequest, Stage
from gengate.guard.detectors._options import reject_unknown
from gengate.guard.detectors.injection_rules import RULE_NAMES, needle_index, rule_hits, rule_presence
from gengate.guard.normalize import MAX_SCAN_CHARS, scan_views

ARTIFACT = "injection.npz"
_WORD = re.compile(r"\w+")
_WORD_SPLIT = re.compile(r"(\w+)")  # split() then alternates separator, word, …, separator
_P = np.uint64(0x100000001B3)  # FNV prime: the rolling-hash base
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing constant: spreads hashes over the high bits
_WORD_SALT = np.uint64(0x2545F4914F6CDD1D)
_BIGRAM_SALT = np.uint64(0x27BB2EE687B0B0FD)
CHAR_NGRAMS = (3, 4, 5)
# One salt per n-gram length, precomputed with Python ints (numpy warns on scalar uint64 overflow).
_NGRAM_SALTS = {n: np.uint64((0x51ED270B27A5D3C1 * n) % 2**64) for n in CHAR_NGRAMS}
# Sentence windows: a sentence ends at . ! ? followed by space, or at a line break; short ones join the next.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")
MIN_SENTENCE_CHARS = 40
MAX_SENTENCES = 4_096
EMBED_MAX_CHARS = 2_000  # MiniLM reads 256 tokens (~1,000 characters) at most; longer windows are cut first

U64Array = npt.NDArray[np.uint64]
I64Array = npt.NDArray[np.int64]
F32Array = npt.NDArray[np.float32]
EmbeddingMode = Literal["auto", "on", "off"]


class Encoder(Protocol):
    """What the embedding stage needs: unit-length float32 rows, one per text (`MiniLMEncoder` fits)."""

    def encode(self, texts: Sequence[str]) -> F32Array:
        """Embeddings of `texts`, shape [len(texts), dimension]."""
        ...


@dataclass(frozen=True, slots=True)
class Features:
    """Hashed n-grams of one text: bucket indices and the character offset each n-gram starts at."""

    char_idx: I64Array
    char_pos: I64Array
    word_idx: I64Array
    word_pos: I64Array


def _bucket(hashes: U64Array, bits: int) -> I64Array:
    return ((hashes * _MIX) >> np.uint64(64 - bits)).astype(np.int64)


def featurize(text: str, bits: int) -> Features:
    """Hash a canonical text's word 1/2-grams and char 3/4/5-grams into bucket indices (run and train time).

    Line breaks read as spaces here (same length, so offsets stay those of `text`).
    """
    text = text.replace("\n", " ")
    padded = f" {text} "
    codes = np.frombuffer(padded.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    char_idx: list[I64Array] = []
    char_pos: list[I64Array] = []
    rolling = codes
    for n in range(2, max(CHAR_NGRAMS) + 1):
        if len(rolling) < 2:
            break
        rolling = rolling[:-1] * _P + codes[n - 1 : n - 1 + len(rolling) - 1]
        if n in CHAR_NGRAMS:
            char_idx.append(_bucket(rolling ^ _NGRAM_SALTS[n], bits))
            char_pos.append(np.arange(len(rolling), dtype=np.int64))
    # The words of `_WORD` and their offsets, without a match object per word: each word starts where the
    # separator before it ends. map() over C callables: no Python frame per word either.
    parts = _WORD_SPLIT.split(text)
    tokens = parts[1::2]
    starts = np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)))[0:-1:2]
    words = np.fromiter(map(zlib.crc32, map(str.encode, tokens)), dtype=np.uint64, count=len(tokens))
    unigrams = _bucket(words ^ _WORD_SALT, bits)
    bigrams = _bucket(words[:-1] * _P + words[1:] + _BIGRAM_SALT, bits)
    empty = np.zeros(0, dtype=np.int64)
    return Features(
        char_idx=np.concatenate(char_idx) if char_idx else empty,
        char_pos=np.concatenate(char_pos) if char_pos else empty,
        word_idx=np.concatenate([unigrams, bigrams]),
        word_pos=np.concatenate([starts, starts[:-1]]),
    )


def sentence_spans(text: str, min_chars: int = MIN_SENTENCE_CHARS) -> tuple[I64Array, I64Array]:
    """Start and end offsets of the sentences of `text`; a sentence shorter than `min_chars` joins the next."""
    starts: list[int] = []
    ends: list[int] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        if m.start() - start >= min_chars:
            starts.append(start)
            ends.append(m.start())
            start = m.end()
            if len(starts) >= MAX_SENTENCES:
                break
    if len(text) - start > 0 and len(starts) < MAX_SENTENCES:
        if starts and len(text) - start < min_chars:
            ends[-1] = len(text)  # a short last sentence belongs to the one before
        else:
            starts.append(start)
            ends.append(len(text))
    return np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)


def window_spans(text: str, sizes: Sequence[int], sentences: bool) -> tuple[I64Array, I64Array]:
    """Every scoring window of `text`: the whole text, sliding windows of each size (stride a quarter of it),
    and — for documents — each sentence and each pair of neighbouring sentences."""
    starts_l = [np.zeros(1, dtype=np.int64)]
    ends_l = [np.array([len(text) + 2], dtype=np.int64)]
    for size in sizes:
        if len(text) > size:
            s = np.arange(0, len(text) - size + size // 4, size // 4, dtype=np.int64)
            starts_l.append(s)
            ends_l.append(s + size)
    if sentences:
        s, e = sentence_spans(text)
        if len(s) > 1:
            starts_l += [s, s[:-1]]
            ends_l += [e, e[1:]]
    return np.concatenate(starts_l), np.concatenate(ends_l)


@dataclass(frozen=True, slots=True)
class EmbeddingHeads:
    """One-hidden-layer MLPs (ReLU) over unit-length sentence embeddings, one per stage (row 0 input, 1 context)."""

    w1: F32Array  # [stages, dimension, hidden]
    b1: F32Array  # [stages, hidden]
    w2: F32Array  # [stages, hidden]
    b2: F32Array  # [stages]

    def logits(self, vectors: F32Array, stage: Stage) -> F32Array:
        """The attack logit of each embedding row for `stage`."""
        row = 0 if stage is Stage.INPUT else 1
        hidden = np.maximum(vectors @ self.w1[row] + self.b1[row], 0.0)
        return (hidden @ self.w2[row] + self.b2[row]).astype(np.float32)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Model:
    """The loaded artifact: n-gram and rule weights per head, biases, the optional embedding heads, and the
    settings chosen at training time (`meta`)."""

    weights: F32Array  # [heads, 2**bits]
    bias: F32Array  # [heads]
    rule_weights: F32Array  # [heads, len(RULES)]
    embed: EmbeddingHeads | None  # one small MLP per stage (input, context) over sentence embeddings
    meta: dict[str, Any]
    version: str

    @property
    def bits(self) -> int:
        return int(self.meta["bits"])

    @property
    def has_embedding_head(self) -> bool:
        return self.embed is not None and "cascade" in self.meta

    @classmethod
    def from_bytes(cls, data: bytes) -> Model:
        """Read an artifact written by `scripts/train_injection.py` (no pickles)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            weights = npz["weights"].astype(np.float32)
            bias = npz["bias"].astype(np.float32)
            meta = json.loads(str(npz["meta"]))
            rules = npz["rule_weights"].astype(np.float32) if "rule_weights" in npz else None
            embed = None
            if "embed_w1" in npz:
                embed = EmbeddingHeads(
                    *(npz[k].astype(np.float32) for k in ("embed_w1", "embed_b1", "embed_w2", "embed_b2"))
                )
        names = tuple(meta.get("rules", ()))
        if rules is None:
            rules = np.zeros((weights.shape[0], len(RULE_NAMES)), dtype=np.float32)
        elif names != RULE_NAMES:
            raise ValueError("injection artifact was trained with other structural rules: retrain it")
        return cls(weights, bias, rules, embed, meta, hashlib.sha256(data).hexdigest()[:12])

    @classmethod
    def packaged(cls) -> Model:
        """The artifact shipped as package data."""
        return cls.from_bytes((resources.files("gengate.guard") / "models" / ARTIFACT).read_bytes())

    def logits(self, text: str) -> F32Array:
        """Whole-text logits of every head for one canonical text (training-time semantics)."""
        f = featurize(text, self.bits)
        out = self.bias + self.rule_weights @ rule_presence(text)
        for idx in (f.char_idx, f.word_idx):
            if len(idx):
                out += self.weights[:, idx].sum(axis=1) / math.sqrt(len(idx))
        return out.astype(np.float32)  # type: ignore[no-any-return]

    def window_logits(
        self, text: str, sizes: Sequence[int], sentences: bool = False
    ) -> tuple[I64Array, I64Array, F32Array]:
        """Logits of each head for every window of one canonical text: (starts, ends, logits[heads, windows]).

        Windows come in several sizes (per stage, from `meta["windows"]`) so a short payload is not drowned by a
        long document; n-gram sums come from cumulative sums, so each window costs O(1). Gathers use `np.take`,
        several times faster than fancy indexing for the same elements.
        """
        starts, ends = window_spans(text, sizes, sentences)
        f = featurize(text, self.bits)
        out = np.repeat(self.bias[:, None], len(starts), axis=1)
        for idx, pos in ((f.char_idx, f.char_pos), (f.word_idx, f.word_pos)):
            if not len(idx):
                continue
            order = np.argsort(pos, kind="stable")
            pos_sorted = np.take(pos, order)
            cum = np.zeros((self.weights.shape[0], len(idx) + 1), dtype=np.float64)
            np.cumsum(np.take(self.weights, np.take(idx, order), axis=1), axis=1, out=cum[:, 1:])
            lo = np.searchsorted(pos_sorted, starts, side="left")
            hi = np.searchsorted(pos_sorted, ends, side="left")
            count = np.maximum(hi - lo, 1).astype(np.float64)
            out += ((np.take(cum, hi, axis=1) - np.take(cum, lo, axis=1)) / np.sqrt(count)).astype(np.float32)
        for r, hits in enumerate(rule_hits(text)):
            if len(hits):
                present = np.searchsorted(hits, ends, side="left") > np.searchsorted(hits, starts, side="left")
                out += self.rule_weights[:, r : r + 1] * present[None, :]
        return starts, ends, out


def sigmoid(x: float) -> float:
    """Logistic function, safe for large |x|."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass(frozen=True, slots=True)
class Verdict:
    """Stage-1 scores for one text: attack probability, jailbreak-vs-injection probability, which view scored
    highest, and that view's most suspicious windows (best first) for the embedding stage."""

    score: float
    jailbreak: float
    view: int
    views: int
    truncated: bool
    text: str = ""  # the canonical view that scored highest
    spans: tuple[tuple[int, int], ...] = ()
    logit: float = 0.0  # the attack head's logit behind `score`


def score_text(
    model: Model, text: str, stage: Stage = Stage.INPUT, max_chars: int = MAX_SCAN_CHARS, top: int = 1,
    max_span: int | None = None,
) -> Verdict:  # fmt: skip
    """Score every normalised view of `text` (original and decoded pieces) and keep the highest.

    `top` windows of the best view, best first and at most `max_span` characters long where any are, are kept
    for the embedding stage.
    """
    windows = model.meta["windows"]
    sizes = [int(w) for w in windows.get(stage.value, windows["input"])]
    sentences = stage.value in model.meta.get("sentence_windows", ())
    views = scan_views(text, max_chars)
    best: tuple[float, int, I64Array, I64Array, F32Array] | None = None
    for i, view in enumerate(views):
        starts, ends, logits = model.window_logits(view, sizes, sentences)
        peak = float(logits[0].max())
        if best is None or peak > best[0]:
            best = (peak, i, starts, ends, logits)
    assert best is not None
    _, view_index, starts, ends, logits = best
    order = np.argsort(-logits[0], kind="stable")
    view_text = views[view_index]
    spans: list[tuple[int, int]] = []
    short = order[(ends[order] - starts[order]) <= max_span] if max_span else order
    for k in short if len(short) else order:
        span = (int(starts[k]), min(int(ends[k]), len(view_text)))
        if span not in spans:
            spans.append(span)
        if len(spans) >= top:
            break
    return Verdict(
        score=sigmoid(float(logits[0, order[0]])),
        jailbreak=sigmoid(float(logits[1, order[0]])),
        view=view_index,
        views=len(views),
        truncated=len(text) > max_chars,
        text=view_text,
        spans=tuple(spans),
        logit=float(logits[0, order[0]]),
    )


@dataclass(frozen=True, slots=True)
class Cascade:
    """When a stage consults the embedding head. Stage-1 scores at or above `high` flag on their own (`high` is the
    stage's threshold); scores in [low, high) are uncertain: the text's `top` windows (at most `max_span`
    characters each, where the text has such windows) are embedded, and the text is flagged when
    sigmoid(a * stage-1 logit + b * the highest embedding logit + c) reaches `threshold`. low == high: no band.
    Texts longer than `max_chars` skip the cascade and are judged by stage 1 alone, with its own threshold: the
    band was calibrated on prompt-sized texts, and a long text's best window scores higher by chance."""

    low: float
    high: float
    threshold: float
    top: int
    max_span: int
    max_chars: int
    a: float
    b: float
    c: float

    @classmethod
    def from_meta(cls, raw: Mapping[str, Any]) -> Cascade:
        """Read one stage's entry of `meta["cascade"]`."""
        return cls(
            float(raw["low"]), float(raw["high"]), float(raw["threshold"]), int(raw["top"]), int(raw["max_span"]),
            int(raw["max_chars"]), float(raw["a"]), float(raw["b"]), float(raw["c"]),
        )  # fmt: skip

    def first_stage(self, model: Model, text: str, stage: Stage) -> Verdict:
        """The stage-1 verdict with the windows this cascade embeds."""
        return score_text(model, text, stage, top=self.top, max_span=self.max_span or None)


def embed_score(model: Model, encoder: Encoder, verdict: Verdict, stage: Stage, cascade: Cascade) -> float:
    """The combined score of the embedding stage for a text whose stage-1 verdict is uncertain."""
    assert model.embed is not None
    pieces = [verdict.text[s:e][:EMBED_MAX_CHARS] for s, e in verdict.spans[: cascade.top]] or [verdict.text]
    emb_logit = float(model.embed.logits(encoder.encode(pieces), stage).max())
    return sigmoid(cascade.a * verdict.logit + cascade.b * emb_logit + cascade.c)


@dataclass(frozen=True, slots=True)
class Assessment:
    """The decision for one text at one stage: flagged or not, the score behind it (stage 1, or the combined score
    when the encoder was consulted), and the stage-1 verdict."""

    first: Verdict
    score: float
    embedded: bool
    flagged: bool
    threshold: float  # the threshold `score` was compared with


class InjectionDetector:
    """Flags prompt injection and jailbreak attempts in user input and in retrieved documents or tool results.

    Thresholds are per stage and come from the artifact (chosen on a validation split at training time); the
    document (`context`) threshold has a stricter false-positive budget. With an `encoder`, texts in a stage's
    uncertain band go through the embedding stage and the artifact's cascade thresholds apply. Output text is
    not checked.
    """

    name = "injection"
    _OPTIONS = frozenset({"embeddings", "thresholds"})

    def __init__(
        self, model: Model | None = None, thresholds: Mapping[Stage, float] | None = None, *,
        encoder: Encoder | None = None,
    ) -> None:  # fmt: skip
        self.model = model if model is not None else Model.packaged()
        needle_index()  # built once per process, here rather than inside the first scan
        self.encoder = encoder if encoder is not None and self.model.has_embedding_head else None
        self.cascades: dict[Stage, Cascade] = {}
        stored = dict(self.model.meta["thresholds"])
        # Stage 1's own thresholds, for texts the cascade does not take (longer than its `max_chars`).
        self.stage1_thresholds = {Stage(k): float(v) for k, v in stored.items() if k in ("input", "context")}
        if self.encoder is not None:
            for key, raw in self.model.meta["cascade"].items():
                cascade = Cascade.from_meta(raw)
                stored[key] = cascade.high
                if cascade.low < cascade.high:
                    self.cascades[Stage(key)] = cascade
        self.version = self.model.version + ("+minilm" if self.encoder is not None else "")
        # Stage-1 thresholds (with the encoder: the `high` end of each band, stricter than without it).
        self.thresholds: dict[Stage, float] = {
            Stage.INPUT: float(stored["input"]),
            Stage.CONTEXT: float(stored["context"]),
        }
        if thresholds:
            self.thresholds.update(thresholds)
            self.stage1_thresholds.update(thresholds)

    @classmethod
    def from_config(cls, options: Mapping[str, Any], *, encoder: Encoder | None = None) -> Self:
        """Build from options: `embeddings` — `auto` (default: the MiniLM stage when its package is installed),
        `on` (required: an error when missing) or `off`; `thresholds` — {input: p, context: p} overrides."""
        reject_unknown("injection", options, cls._OPTIONS)
        mode = options.get("embeddings", "auto")
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"injection: option 'embeddings' must be auto, on or off, not {mode!r}")
        thresholds: dict[Stage, float] = {}
        raw = options.get("thresholds") or {}
        if not isinstance(raw, Mapping):
            raise ValueError("injection: option 'thresholds' must map a stage (input, context) to a number")
        for key, value in raw.items():
            if key not in ("input", "context") or isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("injection: option 'thresholds' must map a stage (input, context) to a number")
            if not 0 < value <= 1:
                raise ValueError(f"injection: threshold for {key} must be in (0, 1]")
            thresholds[Stage(key)] = float(value)
        model = Model.packaged()
        if mode != "off" and encoder is None:
            encoder = _load_encoder(required=mode == "on")
        return cls(model, thresholds, encoder=encoder if mode != "off" else None)

    def assess(self, text: str, stage: Stage) -> Assessment:
        """Decide on `text` at `stage`: stage 1, and the embedding stage when its score is in the band."""
        threshold = self.thresholds.get(stage, 1.0)
        cascade = self.cascades.get(stage)
        if cascade is not None and len(text) > cascade.max_chars:
            cascade, threshold = None, self.stage1_thresholds.get(stage, threshold)
        first = cascade.first_stage(self.model, text, stage) if cascade else score_text(self.model, text, stage)
        if first.score >= threshold or cascade is None or self.encoder is None or first.score < cascade.low:
            return Assessment(first, first.score, False, first.score >= threshold, threshold)
        combined = embed_score(self.model, self.encoder, first, stage, cascade)
        return Assessment(first, combined, True, combined >= cascade.threshold, cascade.threshold)

    def scan(self, request: ScanRequest) -> list[Finding]:
        """One whole-text finding when the text is flagged at the request's stage."""
        if request.stage not in self.thresholds or not request.text:
            return []
        result = self.assess(request.text, request.stage)
        if not result.flagged:
            return []
        first = result.first
        label = "jailbreak" if first.jailbreak >= 0.5 else "injection"
        where = "the text" if first.view == 0 else "a decoded (base64/hex/rot13/URL) piece"
        how = "n-gram and embedding classifiers" if result.embedded else f"{label} classifier"
        explanation = (
            f"{how} scored {result.score:.2f} (threshold {result.threshold:.2f} for {request.stage.value})"
            f" in {where}" + (" of the truncated text" if first.truncated else "")
        )
        return [Finding(label, 0, 0, round(result.score, 4), self.name, explanation)]


def _load_encoder(*, required: bool) -> Encoder | None:
    """The MiniLM encoder when its package is installed; None (or an error naming the fix, when required)."""
    from gengate.embed.minilm import INSTALL_HINT, MiniLMEncoder, ModelNotInstalled, available

    if not available():
        if required:
            raise ValueError(f"injection: embeddings is 'on' but {INSTALL_HINT}")
        return None
    try:
        return MiniLMEncoder()
    except ModelNotInstalled as exc:
        if required:
            raise ValueError(f"injection: {exc}") from None
        return None
