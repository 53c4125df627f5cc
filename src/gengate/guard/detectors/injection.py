"""Prompt-injection and jailbreak detection with a small linear model that runs on numpy alone.

Owns the feature hashing (shared with `scripts/train_injection.py`, so training and run time cannot drift),
the artifact format, sliding-window scoring and the `InjectionDetector`. It must not import scikit-learn, touch
the network or load anything at import time; the artifact is read once, when a detector is built.

Features: word unigrams and bigrams (CRC-32) and character 3/4/5-grams (a polynomial rolling hash computed
with numpy), hashed into 2**bits buckets, each block scaled by 1/sqrt(its n-gram count). The model has two
logistic heads over those features: `attack` (injection or jailbreak vs benign) decides, `jailbreak` (jailbreak
vs other injection) only names the finding. Long texts are scored in overlapping windows in O(1) per window.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import zlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

from gengate.guard.base import Finding, ScanRequest, Stage
from gengate.guard.normalize import MAX_SCAN_CHARS, scan_views

ARTIFACT = "injection.npz"
_WORD = re.compile(r"\w+")
_P = np.uint64(0x100000001B3)  # FNV prime: the rolling-hash base
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing constant: spreads hashes over the high bits
_WORD_SALT = np.uint64(0x2545F4914F6CDD1D)
_BIGRAM_SALT = np.uint64(0x27BB2EE687B0B0FD)
CHAR_NGRAMS = (3, 4, 5)
# One salt per n-gram length, precomputed with Python ints (numpy warns on scalar uint64 overflow).
_NGRAM_SALTS = {n: np.uint64((0x51ED270B27A5D3C1 * n) % 2**64) for n in CHAR_NGRAMS}

U64Array = npt.NDArray[np.uint64]
I64Array = npt.NDArray[np.int64]
F32Array = npt.NDArray[np.float32]


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
    """Hash a canonical text's word 1/2-grams and char 3/4/5-grams into bucket indices (run and train time)."""
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
    matches = list(_WORD.finditer(text))
    words = np.fromiter((zlib.crc32(m.group(0).encode()) for m in matches), dtype=np.uint64, count=len(matches))
    starts = np.fromiter((m.start() for m in matches), dtype=np.int64, count=len(matches))
    unigrams = _bucket(words ^ _WORD_SALT, bits)
    bigrams = _bucket(words[:-1] * _P + words[1:] + _BIGRAM_SALT, bits)
    empty = np.zeros(0, dtype=np.int64)
    return Features(
        char_idx=np.concatenate(char_idx) if char_idx else empty,
        char_pos=np.concatenate(char_pos) if char_pos else empty,
        word_idx=np.concatenate([unigrams, bigrams]),
        word_pos=np.concatenate([starts, starts[:-1]]),
    )


@dataclass(frozen=True, slots=True)
class Model:
    """The loaded artifact: head weights (heads x buckets), biases, and the settings chosen at training time."""

    weights: F32Array
    bias: F32Array
    meta: dict[str, Any]
    version: str

    @property
    def bits(self) -> int:
        return int(self.meta["bits"])

    @classmethod
    def from_bytes(cls, data: bytes) -> Model:
        """Read an artifact written by `scripts/train_injection.py` (no pickles)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            weights = npz["weights"].astype(np.float32)
            bias = npz["bias"].astype(np.float32)
            meta = json.loads(str(npz["meta"]))
        return cls(weights, bias, meta, hashlib.sha256(data).hexdigest()[:12])

    @classmethod
    def packaged(cls) -> Model:
        """The artifact shipped as package data."""
        return cls.from_bytes((resources.files("gengate.guard") / "models" / ARTIFACT).read_bytes())

    def logits(self, text: str) -> F32Array:
        """Whole-text logits of every head for one canonical text (training-time semantics)."""
        f = featurize(text, self.bits)
        out = self.bias.copy()
        for idx in (f.char_idx, f.word_idx):
            if len(idx):
                out += self.weights[:, idx].sum(axis=1) / math.sqrt(len(idx))
        return out

    def window_logits(self, text: str, sizes: list[int]) -> F32Array:
        """Logits of each head for the highest-scoring window (by the attack head) of one canonical text.

        Windows come in several sizes (per stage, from `meta["windows"]`; stride a quarter of the size) so a short
        payload is not drowned by a long document; the whole text is one more candidate.
        """
        if len(text) <= min(sizes):
            return self.logits(text)
        f = featurize(text, self.bits)
        starts_l, ends_l = [np.zeros(1, dtype=np.int64)], [np.array([len(text) + 2], dtype=np.int64)]
        for size in sizes:
            if len(text) > size:
                s = np.arange(0, len(text) - size + size // 4, size // 4, dtype=np.int64)
                starts_l.append(s)
                ends_l.append(s + size)
        starts, ends = np.concatenate(starts_l), np.concatenate(ends_l)
        out = np.repeat(self.bias[:, None], len(starts), axis=1)
        for idx, pos in ((f.char_idx, f.char_pos), (f.word_idx, f.word_pos)):
            order = np.argsort(pos, kind="stable")
            pos_sorted = pos[order]
            cum = np.zeros((self.weights.shape[0], len(idx) + 1), dtype=np.float64)
            np.cumsum(self.weights[:, idx[order]], axis=1, out=cum[:, 1:])
            lo = np.searchsorted(pos_sorted, starts, side="left")
            hi = np.searchsorted(pos_sorted, ends, side="left")
            count = np.maximum(hi - lo, 1).astype(np.float64)
            out += ((cum[:, hi] - cum[:, lo]) / np.sqrt(count)).astype(np.float32)
        best = int(np.argmax(out[0]))
        return out[:, best]


def sigmoid(x: float) -> float:
    """Logistic function, safe for large |x|."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass(frozen=True, slots=True)
class Verdict:
    """Scores for one text: attack probability, jailbreak-vs-injection probability, which view scored highest."""

    score: float
    jailbreak: float
    view: int
    views: int
    truncated: bool


def score_text(model: Model, text: str, stage: Stage = Stage.INPUT, max_chars: int = MAX_SCAN_CHARS) -> Verdict:
    """Score every normalised view of `text` (original and decoded pieces) and keep the highest."""
    windows = model.meta["windows"]
    sizes = [int(w) for w in windows.get(stage.value, windows["input"])]
    views = scan_views(text, max_chars)
    best: F32Array | None = None
    best_view = 0
    for i, view in enumerate(views):
        logits = model.window_logits(view, sizes)
        if best is None or logits[0] > best[0]:
            best, best_view = logits, i
    assert best is not None
    return Verdict(
        score=sigmoid(float(best[0])),
        jailbreak=sigmoid(float(best[1])),
        view=best_view,
        views=len(views),
        truncated=len(text) > max_chars,
    )


class InjectionDetector:
    """Flags prompt injection and jailbreak attempts in user input and in retrieved documents or tool results.

    Thresholds are per stage and come from the artifact (chosen on a validation split at training time); the
    document (`context`) threshold has a stricter false-positive budget. Output text is not checked.
    """

    name = "injection"

    def __init__(self, model: Model | None = None, thresholds: dict[Stage, float] | None = None) -> None:
        self.model = model if model is not None else Model.packaged()
        self.version = self.model.version
        stored = self.model.meta["thresholds"]
        self.thresholds: dict[Stage, float] = {
            Stage.INPUT: float(stored["input"]),
            Stage.CONTEXT: float(stored["context"]),
        }
        if thresholds:
            self.thresholds.update(thresholds)

    def scan(self, request: ScanRequest) -> list[Finding]:
        """One whole-text finding when the text scores at or above the stage's threshold."""
        threshold = self.thresholds.get(request.stage)
        if threshold is None or not request.text:
            return []
        verdict = score_text(self.model, request.text, request.stage)
        if verdict.score < threshold:
            return []
        label = "jailbreak" if verdict.jailbreak >= 0.5 else "injection"
        where = "the text" if verdict.view == 0 else "a decoded (base64/hex/rot13/URL) piece"
        explanation = (
            f"{label} classifier scored {verdict.score:.2f} (threshold {threshold:.2f} for {request.stage.value})"
            f" in {where}" + (" of the truncated text" if verdict.truncated else "")
        )
        return [Finding(label, 0, 0, round(verdict.score, 4), self.name, explanation)]
