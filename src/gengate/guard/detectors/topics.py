"""Topic policies ("no financial advice", "no legal advice") by sentence-embedding similarity, fully offline.

Owns turning configured topics (a description, examples, counter-examples, a threshold) into unit vectors once at
build, cutting scanned text into sentence segments, and scoring each segment against each topic with the MiniLM
encoder from `gengate.embed`. Must not decide what a match means (policies map `topic.<name>` findings to
actions), and must not load the model at import time.

Score of a segment for a topic: the mean of its best cosine similarity to one example and its cosine similarity
to the topic's centroid (description and examples averaged), clipped to [0, 1]. A segment matches when that score
reaches the topic's threshold and it is closer to some example than to every counter-example.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol, Self

import numpy as np
import numpy.typing as npt
import yaml

from gengate.embed.minilm import INSTALL_HINT, MiniLMEncoder, ModelNotInstalled, available
from gengate.guard.base import Finding, ScanRequest
from gengate.guard.detectors._options import reject_unknown

F32 = npt.NDArray[np.float32]
DEFAULT_THRESHOLD = 0.5
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# A sentence ends at . ! ? (or their CJK forms) followed by space, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n\s*")
_WORD = re.compile(r"\S+")


class Encoder(Protocol):
    """What the detector needs from an embedding model: unit-length float32 rows, one per text."""

    def encode(self, texts: Sequence[str]) -> F32:
        """Embeddings of `texts`, shape [len(texts), dimension], each of unit length."""
        ...


@dataclass(frozen=True, slots=True)
class Topic:
    """One topic policy as configured."""

    name: str
    description: str
    examples: tuple[str, ...]
    counter_examples: tuple[str, ...] = ()
    threshold: float = DEFAULT_THRESHOLD


@dataclass(frozen=True, slots=True)
class _Vectors:
    examples: F32  # [k, d]
    centroid: F32  # [d], unit length
    counter: F32  # [m, d], possibly m = 0


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of the scanned text that is embedded on its own."""

    start: int
    end: int
    text: str


def default_topics() -> dict[str, Topic]:
    """The topics shipped in `gengate/guard/data/topics.yaml` (financial, legal and medical advice)."""
    raw = yaml.safe_load((resources.files("gengate.guard") / "data" / "topics.yaml").read_text(encoding="utf-8"))
    return {name: _parse_topic(name, spec) for name, spec in raw.items()}


def segments(text: str, *, max_words: int = 120, max_segments: int = 32) -> list[Segment]:
    """Sentences of `text` with their offsets: a sentence of fewer than 4 words joins the next (the last one joins
    the one before), one longer
    than `max_words` is cut into pieces of that many words, and only the first `max_segments` are kept."""
    out: list[Segment] = []

    def flush(start: int, end: int) -> None:
        words = list(_WORD.finditer(text, start, end))
        for i in range(0, len(words), max_words):
            piece_start, piece_end = words[i].start(), words[min(i + max_words, len(words)) - 1].end()
            if len(out) < max_segments:
                out.append(Segment(piece_start, piece_end, text[piece_start:piece_end]))

    bounds = [0]
    for m in _SENTENCE_END.finditer(text):
        bounds += (m.start(), m.end())
    bounds.append(len(text))
    start: int | None = None
    count = 0
    for i in range(0, len(bounds), 2):
        words = list(_WORD.finditer(text, bounds[i], bounds[i + 1]))
        if not words:
            continue
        start = words[0].start() if start is None else start
        count += len(words)
        if count >= 4:
            flush(start, words[-1].end())
            start, count = None, 0
        if len(out) >= max_segments:
            return out
    if start is not None:
        if out:  # a short last sentence ("Thanks.") belongs with the one before it
            start = out.pop().start
        flush(start, len(text))
    return out


class TopicDetector:
    """Flags text about configured topics; label `topic.<name>`, explanation names the topic.

    A text that is one segment gets a whole-text finding; longer texts get a finding per matching sentence.
    """

    name = "topics"
    version = "1"
    _OPTIONS = frozenset({"topics", "use_defaults", "max_segments", "max_words"})
    _TOPIC_KEYS = frozenset({"description", "examples", "counter_examples", "threshold"})

    def __init__(
        self, topics: Sequence[Topic], encoder: Encoder, *, max_segments: int = 32, max_words: int = 120
    ) -> None:
        if not topics:
            raise ValueError("at least one topic is needed")
        if max_segments < 1 or max_words < 8:
            raise ValueError("max_segments must be at least 1 and max_words at least 8")
        self.topics = tuple(topics)
        self.max_segments = max_segments
        self.max_words = max_words
        self._encoder = encoder
        self._vectors: list[_Vectors] = []
        for topic in self.topics:
            vectors = encoder.encode([topic.description, *topic.examples, *topic.counter_examples])
            centroid = vectors[: 1 + len(topic.examples)].mean(axis=0)
            centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
            self._vectors.append(
                _Vectors(vectors[1 : 1 + len(topic.examples)], centroid, vectors[1 + len(topic.examples) :])
            )

    @classmethod
    def from_config(cls, options: Mapping[str, Any], *, encoder: Encoder | None = None) -> Self:
        """Build from options: `topics` maps each name to {description, examples, counter_examples, threshold};
        `use_defaults: true` adds the shipped topics (configured ones of the same name win)."""
        reject_unknown("topics", options, cls._OPTIONS)
        use_defaults = options.get("use_defaults", False)
        if not isinstance(use_defaults, bool):
            raise ValueError("topics: option 'use_defaults' must be true or false")
        raw = options.get("topics", {})
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ValueError("topics: option 'topics' must be a mapping of name -> {description, examples, ...}")
        topics = default_topics() if use_defaults else {}
        for name, spec in raw.items():
            topics[name] = _parse_topic(name, spec)
        if not topics:
            raise ValueError("topics: configure at least one topic under 'topics', or set 'use_defaults: true'")
        limits = {}
        for key, default in (("max_segments", 32), ("max_words", 120)):
            value = options.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"topics: option {key!r} must be an integer")
            limits[key] = value
        if encoder is None:
            if not available():
                raise ValueError(f"topics: {INSTALL_HINT}")
            try:
                encoder = MiniLMEncoder()
            except ModelNotInstalled as exc:
                raise ValueError(f"topics: {exc}") from None
        try:
            return cls(list(topics.values()), encoder, **limits)
        except ValueError as exc:
            raise ValueError(f"topics: {exc}") from None

    def scores(self, texts: Sequence[str]) -> F32:
        """Score of each text for each topic, [len(texts), len(topics)], in [0, 1]; 0 where a text is closer to
        a counter-example than to every example."""
        embedded = self._encoder.encode(texts)
        out = np.zeros((len(texts), len(self.topics)), dtype=np.float32)
        for j, vec in enumerate(self._vectors):
            best = (embedded @ vec.examples.T).max(axis=1)
            score = np.clip((best + embedded @ vec.centroid) / 2, 0.0, 1.0)
            if len(vec.counter):
                score[(embedded @ vec.counter.T).max(axis=1) >= best] = 0.0
            out[:, j] = score
        return out

    def scan(self, request: ScanRequest) -> list[Finding]:
        """One finding per (matching sentence, topic); whole-text findings when the text is a single sentence."""
        parts = segments(request.text, max_words=self.max_words, max_segments=self.max_segments)
        if not parts:
            return []
        scores = self.scores([p.text for p in parts])
        whole = len(parts) == 1
        findings: list[Finding] = []
        for i, part in enumerate(parts):
            for j, topic in enumerate(self.topics):
                score = float(scores[i, j])
                if score >= topic.threshold:
                    start, end = (0, 0) if whole else (part.start, part.end)
                    why = f"about {topic.name.replace('_', ' ')} (similarity {score:.2f} >= {topic.threshold:.2f})"
                    findings.append(Finding(f"topic.{topic.name}", start, end, round(score, 4), self.name, why))
        return findings


def _parse_topic(name: object, spec: object) -> Topic:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"topics: topic name {name!r} must be lowercase letters, digits and underscores")
    if not isinstance(spec, Mapping):
        raise ValueError(f"topics: topic {name!r} must be a mapping with 'description' and 'examples'")
    unknown = sorted(set(spec) - TopicDetector._TOPIC_KEYS)
    if unknown:
        raise ValueError(f"topics: topic {name!r} has unknown key(s) {unknown}")
    description = spec.get("description")
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"topics: topic {name!r} needs a non-empty 'description'")
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("examples", "counter_examples"):
        items = spec.get(key) or []
        if not isinstance(items, list | tuple) or not all(isinstance(x, str) and x.strip() for x in items):
            raise ValueError(f"topics: topic {name!r}: {key!r} must be a list of non-empty strings")
        lists[key] = tuple(items)
    if not lists["examples"]:
        raise ValueError(f"topics: topic {name!r} needs at least one example in 'examples'")
    threshold = spec.get("threshold", DEFAULT_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 1:
        raise ValueError(f"topics: topic {name!r}: 'threshold' must be a number in (0, 1]")
    return Topic(name, description.strip(), lists["examples"], lists["counter_examples"], float(threshold))
