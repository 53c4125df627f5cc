"""The learned PII sequence tagger: a linear-chain model over tokens with BIO tags, decoded with Viterbi.

The artifact (`gengate/guard/data/pii_tagger.npz`, written by `scripts/train_pii_tagger.py`, no pickles) holds
the feature names, a weight row per feature and tag, tag transition scores and the entity classes. It is an
averaged structured perceptron trained on the training templates of presidio-synth-pii; its version is a hash
of the artifact's bytes. Features come from `pii_features` (shared with training).

Inference is pure Python plus numpy: the summed weights of each distinct token's features (and of its features
as a neighbour, of word pairs and of layouts) are computed once and cached on the tagger (those of the common
vocabulary all at once, at its first use), so a text's emission scores are a few gathers; exact Viterbi then
costs one small numpy step per token that is not provably "outside" (runs of those are passed in one step), with
the back-pointers along the best path found afterwards. A span's score comes from the margin between the best
path and the same path with the span called "outside". This module only proposes spans; `pii.PiiDetector`
decides labels, overlaps and thresholds.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import string
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

from gengate.guard.detectors.pii_features import (
    Featurizer,
    WordInfo,
    gap_kind,
    layout_features,
    tokenize,
)
from gengate.guard.detectors.pii_names import Gazetteer

ARTIFACT = "pii_tagger.npz"
F32 = npt.NDArray[np.float32]
# Sequences longer than this many tokens are decoded in pieces (cut at a line break or sentence end if one is
# near), so memory stays bounded on huge inputs.
MAX_TOKENS = 1024
_CUT_LOOKBACK = 256
MAX_CACHED_ROWS = 100_000  # summed-weight rows cached per tagger (~11 MB)
_FORBIDDEN = -1e4  # transition score of an impossible tag bigram (O → I-x, B-x → I-y)
_UNREACHABLE = -1e30
_LINE_BREAKS = frozenset({"n", "N"})  # gap kinds that hold a line break


@dataclass(frozen=True, slots=True)
class TaggedSpan:
    """A span the tagger proposes: entity class, character offsets, score in [0.5, 1)."""

    entity: str
    start: int
    end: int
    score: float


def allowed_transitions(classes: tuple[str, ...]) -> npt.NDArray[np.bool_]:
    """`[prev, next]` is True where the BIO scheme allows the bigram (an I-x only after B-x or I-x)."""
    n = 1 + 2 * len(classes)
    allowed = np.ones((n, n), dtype=bool)
    for k in range(len(classes)):
        inside = 2 + 2 * k
        allowed[:, inside] = False
        allowed[inside - 1, inside] = allowed[inside, inside] = True
    return allowed


@dataclass(frozen=True, slots=True)
class TaggerModel:
    """The loaded artifact."""

    classes: tuple[str, ...]
    features: dict[str, int]
    weights: F32  # (features, tags)
    transitions: F32  # (tags, tags); the tagger adds the BIO constraints
    start: F32  # (tags,) score of the first tag
    end: F32  # (tags,) score of the last tag
    meta: dict[str, Any]
    version: str

    @classmethod
    def from_bytes(cls, data: bytes) -> TaggerModel:
        """Read an artifact written by `to_bytes` (no pickles)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            names = bytes(npz["features"]).decode("utf-8").split("\n")
            meta = json.loads(str(npz["meta"]))
            weights = npz["weights"].astype(np.float32)
            transitions = npz["transitions"].astype(np.float32)
            start = npz["start"].astype(np.float32)
            end = npz["end"].astype(np.float32)
        classes = tuple(meta["classes"])
        version = hashlib.sha256(data).hexdigest()[:12]
        return cls(classes, {n: i for i, n in enumerate(names)}, weights, transitions, start, end, meta, version)

    @classmethod
    def shipped(cls) -> TaggerModel:
        """The artifact shipped as package data (read from the installed package; no network)."""
        return cls.from_bytes(resources.files("gengate.guard.data").joinpath(ARTIFACT).read_bytes())

    def to_bytes(self) -> bytes:
        """Serialise as an `.npz` (weights as float16; used by the training script). The bytes depend only on the
        model (fixed zip timestamps), so the version hash changes exactly when the model does."""
        names = sorted(self.features, key=self.features.__getitem__)
        arrays = {
            "features": np.frombuffer("\n".join(names).encode("utf-8"), dtype=np.uint8),
            "meta": np.array(json.dumps({**self.meta, "classes": list(self.classes)}, sort_keys=True)),
            "weights": self.weights.astype(np.float16),
            "transitions": self.transitions.astype(np.float32),
            "start": self.start.astype(np.float32),
            "end": self.end.astype(np.float32),
        }
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, array in arrays.items():
                member = io.BytesIO()
                np.lib.format.write_array(member, array, allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, member.getvalue())
        return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class _Entry:
    """A token's cached rows of summed weights: its own features, and what it adds as a neighbour at offsets
    -2, -1, 1, 2 (rows of `PiiTagger._table`)."""

    rows: tuple[int, int, int, int, int]  # own, then as the neighbour at -2, -1, 1, 2
    ident: str
    short: str


class PiiTagger:
    """Proposes PII spans with a `TaggerModel` (see module docstring).

    `unknown` lists lower-case words whose identity features are withheld, as if never seen in training: with a
    gazetteer that lacks them too, it measures the tagger on genuinely unseen names (bench only).
    """

    def __init__(
        self, model: TaggerModel, gazetteer: Gazetteer, unknown: frozenset[str] = frozenset(),
        outside_bias: float = 0.0,
    ) -> None:  # fmt: skip
        self.model = model
        self.featurizer = Featurizer(gazetteer)
        self.unknown = unknown
        # Subtracted from every token's "outside" score: > 0 proposes more spans, recall over precision
        # (cross-validated by `scripts/train_pii_tagger.py --validate --outside-bias`; the shipped tagger uses 0).
        self.outside_bias = float(outside_bias)
        allowed = allowed_transitions(model.classes)
        self._trans = np.where(allowed, model.transitions, np.float32(_FORBIDDEN)).astype(np.float32)
        self._start = np.where(allowed[0], model.start, np.float32(_FORBIDDEN)).astype(np.float32)
        self._end = model.end.astype(np.float32)
        self._scale = float(model.meta.get("score_scale", 1.0)) or 1.0
        self._bounds = _OutsideBounds(self._trans, self._start, self._end)
        self._trans_t = np.ascontiguousarray(self._trans.T)
        self._unreachable = np.full(len(self._trans), _UNREACHABLE, dtype=np.float32)
        # Cached sums of weight rows, one per distinct token, neighbour role, word pair or layout: a text's
        # emissions are then a handful of gathers instead of one per feature. Bounded (see `_emissions`).
        self._table = np.zeros((1024, len(model.transitions)), dtype=np.float32)  # row 0 stays zero
        self._rows: dict[tuple[int, ...], int] = {}  # feature ids -> row (equal sums share a row)
        self._tokens: dict[str, _Entry] = {}
        self._layouts: dict[tuple[str, str, bool, bool, int, str], int] = {}
        self._pending: list[tuple[int, list[int]]] = []
        # The model's weights with one zero row appended (the row of an unknown feature).
        self._weights = np.vstack([model.weights, np.zeros((1, len(model.transitions)), dtype=np.float32)])
        self._edges: tuple[int, ...] = ()
        # The entries (and rows) of the common vocabulary, computed at first use and kept for the tagger's life;
        # the bounded cache above holds everything else, in the table rows after the vocabulary's.
        self._vocab: dict[str, _Entry] | None = None
        self._vocab_rows: dict[tuple[int, ...], int] = {}
        self._clear()
        # Long texts are scanned in worker threads: the caches are read and grown under this lock.
        self._lock = threading.Lock()

    def _row(self, names: list[str]) -> int:
        """The table row holding the summed weights of the features `names` (0 when none is known)."""
        ids = tuple([i for i in map(self.model.features.get, names) if i is not None])
        if not ids:
            return 0
        row = self._rows.get(ids) or self._vocab_rows.get(ids)
        if row is None:
            row = self._rows[ids] = len(self._vocab_rows) + len(self._rows) + 1
            self._pending.append((row, list(ids)))  # summed in one batch by `_flush`
        return row

    def _flush(self) -> None:
        """Fill the rows allocated since the last flush (one gather and one `add.reduceat` for all of them)."""
        if not self._pending:
            return
        last = self._pending[-1][0]
        if last >= len(self._table):
            size = len(self._table)
            while size <= last:
                size *= 2
            grown = np.zeros((size, self._table.shape[1]), dtype=np.float32)
            grown[: len(self._table)] = self._table
            self._table = grown
        rows = [row for row, _ in self._pending]
        flat = [i for _, ids in self._pending for i in ids]
        offsets = np.cumsum([0] + [len(ids) for _, ids in self._pending[:-1]])
        self._table[rows] = np.add.reduceat(self.model.weights[flat], offsets, axis=0)
        self._pending.clear()

    def _clear(self) -> None:
        if self._vocab is not None:  # the vocabulary's rows (and the edges') keep their places in the table
            self._rows.clear()
            self._tokens = dict(self._vocab)  # one lookup per token (a copy of the dict, not of the entries)
            self._layouts.clear()
            self._pending.clear()
            return
        self._rows.clear()
        self._tokens.clear()
        self._layouts.clear()
        self._pending.clear()
        self._table = np.zeros((1024, len(self.model.transitions)), dtype=np.float32)
        edges = [f"{o}w={'<s>' if o < 0 else '</s>'}" for o in (-2, -1, 1, 2)]
        self._edges = tuple(self._row([name]) for name in edges)
        self._flush()

    def vocabulary(self) -> list[str]:
        """The tokens whose entries are preloaded: the gazetteer's common words and the words the model knows by
        identity (lower-case and capitalised), short numbers, years and ASCII punctuation. Most tokens of ordinary
        English text are among them, so a text rarely pays for featurising a new token."""
        words = set(self.featurizer.gazetteer.common)
        words.update(name[2:] for name in self.model.features if name.startswith("w="))
        words.update([w.capitalize() for w in words])
        words.update(str(i) for i in range(1000))
        words.update(f"{i:02d}" for i in range(10))
        words.update(f"{i:03d}" for i in range(100))
        words.update(str(year) for year in range(1900, 2036))
        words.update(string.punctuation)
        # Only strings that are one token (the model's names also hold placeholders such as "<d>").
        return sorted(w for w in words if tokenize(w) == [(0, len(w))])

    def warm(self) -> None:
        """Compute the common vocabulary's entries now rather than on the first scan (a gateway does this at
        startup, so no request waits for it)."""
        with self._lock:
            if self._vocab is None:
                self._preload()

    def _preload(self) -> None:
        """Compute the entries of `vocabulary` (once per tagger, at its first use: about 0.6 s of CPU and 14 MB)."""
        for count, word in enumerate(self.vocabulary(), start=1):
            self._entry(word)
            if count % 1000 == 0:  # in batches, so the gathered weights stay small
                self._flush()
        self._flush()
        self._vocab, self._vocab_rows = self._tokens, self._rows
        self._tokens, self._rows = dict(self._vocab), {}
        self._layouts.clear()

    def _entry(self, token: str) -> _Entry:
        entry = self._tokens.get(token)
        if entry is not None:
            return entry
        info: WordInfo = self.featurizer.word(token)
        known = info.ident[2:] not in self.unknown
        cap = "C" if info.short[:1] == "X" else "l"
        names = ["b", *info.form, *([info.ident] if known else [])]
        names += [f"g={f}" for f in info.flags] + [f"g{cap}={f}" for f in info.flags]
        rows = [self._row(names)]
        for o in (-2, -1, 1, 2):
            ctx = [f"{o}{info.ident}"] if known else []
            if o in (-1, 1):
                ctx.append(f"{o}ss={info.short}")
                ctx += [f"{o}g={f}" for f in info.flags]
            rows.append(self._row(ctx))
        entry = _Entry((rows[0], rows[1], rows[2], rows[3], rows[4]), info.ident if known else "?", info.short)
        self._tokens[token] = entry
        return entry

    def emissions(self, text: str, spans: list[tuple[int, int]]) -> F32:
        """Emission scores (tokens x tags) for one sequence of token spans."""
        with self._lock:
            return self._emissions(text, spans)

    def _emissions(self, text: str, spans: list[tuple[int, int]]) -> F32:
        # A call adds at most 8 rows per token; a long-running gateway sees unbounded vocabularies, so the cache
        # starts again (before the call, never during it) once it would pass MAX_CACHED_ROWS (not counting the
        # preloaded vocabulary's rows, which stay).
        if self._vocab is None:
            self._preload()
        if len(self._rows) + 8 * len(spans) > MAX_CACHED_ROWS:
            self._clear()
        tokens = self._tokens
        entries = [tokens.get(w) or self._entry(w) for w in [text[a:b] for a, b in spans]]
        n = len(entries)
        edges = [0, *(b for _, b in spans)]
        gaps = [text[e:a] for e, (a, _) in zip(edges, spans, strict=False)] + [text[edges[n] :]]
        kinds = [("s" if g == " " else gap_kind(g)) for g in gaps]
        idents = [e.ident for e in entries]
        shorts = [e.short for e in entries]
        # Word pairs and bigrams are looked up in the model directly: in prose most are new and unknown, and
        # caching them would fill the cache with zero rows.
        index, zero = self.model.features, len(self.model.weights)
        prevs = ["<s>", *idents[:-1]]
        pairs = [index.get(f"pw|ss={p}|{c}", zero) for p, c in zip(prevs, shorts, strict=False)]
        bigrams = [index.get(f"pw2={p}|{q}", zero) for p, q in zip(["<s>", *prevs], prevs, strict=False)]
        layouts = self._layout_rows(kinds, shorts)
        self._flush()
        rows = np.array([e.rows for e in entries], dtype=np.intp).reshape(n, 5)
        table = self._table
        em = table[rows[:, 0]]
        em += table[layouts]
        em += self._weights[pairs]
        em += self._weights[bigrams]
        for slot, offset in enumerate((-2, -1, 1, 2), start=1):
            edge = table[self._edges[slot - 1]]
            if offset < 0:  # position t sees token t + offset (< t)
                em[-offset:] += table[rows[: n + offset, slot]]
                em[: min(n, -offset)] += edge
            else:
                em[: max(0, n - offset)] += table[rows[offset:, slot]]
                em[max(0, n - offset) :] += edge
        if self.outside_bias:
            em[:, 0] -= self.outside_bias
        return em

    def _layout_rows(self, kinds: list[str], shorts: list[str]) -> list[int]:
        """The layout row of each token, from the kinds of the gaps around the tokens (`gap_kind`; one more gap
        than tokens): the keys `layout_key` gives, built for all tokens at once."""
        n = len(shorts)
        breaks = [t for t in range(1, n) if kinds[t] in _LINE_BREAKS]
        firsts = [False] * n
        lasts = [False] * n
        sizes: list[int] = []
        begin = 0
        for end in [*breaks, n]:
            if end > begin:
                count = end - begin
                sizes += [count if count <= 3 else 5 if count <= 6 else 7] * count
                firsts[begin] = lasts[end - 1] = True
            begin = end
        keys = list(zip(kinds, kinds[1:], firsts, lasts, sizes, shorts, strict=False))
        cache = self._layouts
        out = [cache.get(key, -1) for key in keys]
        for t, row in enumerate(out):
            if row < 0:
                key = keys[t]
                row = cache.get(key, -1)
                if row < 0:
                    row = cache[key] = self._row(layout_features(*key))
                out[t] = row
        return out

    def find(self, text: str) -> Iterator[TaggedSpan]:
        """Yield the spans of the best tag sequence, with their scores."""
        spans = tokenize(text)
        for a, b in _pieces(text, spans):
            piece = spans[a:b]
            for first, last, k, margin in self.decode(self.emissions(text, piece)):
                score = 1.0 - 0.5 * math.exp(-max(margin, 0.0) / self._scale)
                yield TaggedSpan(self.model.classes[k], piece[first][0], piece[last][1], round(score, 3))

    def decode(self, emissions: F32) -> Iterator[tuple[int, int, int, float]]:
        """Spans (first token, last token, class, margin) of the Viterbi path. The margin is how much the path
        loses if the span's tokens are called outside instead, the rest of the path unchanged (>= 0).

        The forward pass keeps only the best scores (three small numpy calls a step); the best predecessors along
        the path are found afterwards from the stored scores (in one batch for the outside tag), by the same
        float32 sums and the same first-maximum rule, so the path is the one a step-by-step argmax gives.
        """
        n, tags = emissions.shape
        if n == 0:
            return
        trans = self._trans
        # Positions where "outside" provably wins are passed in one step per run (exact: see _OutsideBounds).
        forced = self._bounds.forced(emissions) if n > 2 else np.zeros(n, dtype=bool)
        forced_list = forced.tolist()
        runs = _run_ends(forced_list)
        outside = np.concatenate([[0.0], np.cumsum(emissions[:, 0], dtype=np.float64)]).tolist()
        stay = float(trans[0, 0])
        into_outside = trans[:, 0]
        trans_t = self._trans_t  # scores[y, p] = trans[p, y] + alpha[p]: the reduction runs along rows
        back = [0] * n  # at the first position of a forced run: the tag the run came from
        stepped: list[int] = []  # positions decoded by a full step
        before: list[F32] = []  # the scores those steps started from
        scores = np.empty((tags, tags), dtype=np.float32)
        maximum = np.maximum.reduce  # `ndarray.max` without its Python-level wrapper
        rows = list(emissions)
        alpha = self._start + rows[0]
        t = 1
        while t < n:
            u = runs[t]
            if u > t:  # t .. u-1 are outside in every best path
                into = alpha + into_outside
                came = int(into.argmax())
                back[t] = came
                alpha = self._unreachable.copy()
                alpha[0] = float(into[came]) + (outside[u] - outside[t]) + (u - t - 1) * stay
                t = u
                continue
            stepped.append(t)
            before.append(alpha)
            np.add(trans_t, alpha, out=scores)
            alpha = maximum(scores, axis=1)
            alpha += rows[t]
            t += 1
        # Most stepped positions of the path are outside: their best predecessors come from one batch; the few
        # others are found one at a time (the same float32 sums, `trans_t[y, p]` being `trans[p, y]`).
        from_outside = (np.array(before) + trans_t[0]).argmax(axis=1).tolist() if stepped else []
        step_of = {t: k for k, t in enumerate(stepped)}
        tag = int((alpha + self._end).argmax())
        path = [tag]
        for t in range(n - 1, 0, -1):
            k = step_of.get(t)
            if k is not None:
                tag = from_outside[k] if tag == 0 else int((before[k] + trans_t[tag]).argmax())
            elif t == 1 or not forced_list[t - 1]:  # the first position of a forced run: where it came from
                tag = back[t]
            else:  # inside a forced run the tag is outside
                tag = 0
            path.append(tag)
        path.reverse()
        t = 0
        while t < n:
            tag = path[t]
            if tag % 2 == 0:  # outside (an I- never follows O: the transitions forbid it)
                t += 1
                continue
            u = t + 1
            while u < n and path[u] == tag + 1:  # B-x, then I-x ...
                u += 1
            yield t, u - 1, (tag - 1) // 2, self._margin(emissions, path, t, u)
            t = u

    def _margin(self, emissions: F32, path: list[int], t: int, u: int) -> float:
        """Score of `path` minus the score of the same path with tokens t..u-1 outside."""
        trans, y = self._trans, path
        margin = sum(float(emissions[i, y[i]] - emissions[i, 0]) for i in range(t, u))
        margin += sum(float(trans[y[i - 1], y[i]] - trans[0, 0]) for i in range(t + 1, u))
        if t == 0:
            margin += float(self._start[y[t]] - self._start[0])
        else:
            margin += float(trans[y[t - 1], y[t]] - trans[y[t - 1], 0])
        if u == len(y):
            margin += float(self._end[y[u - 1]] - self._end[0])
        else:
            margin += float(trans[y[u - 1], y[u]] - trans[0, y[u]])
        return margin


def _run_ends(forced: list[bool]) -> list[int]:
    """For each position, where the run of forced positions starting there ends (the position itself if none)."""
    ends = list(range(len(forced)))
    for t in range(len(forced) - 1, -1, -1):
        if forced[t]:
            ends[t] = ends[t + 1] if t + 1 < len(forced) and forced[t + 1] else t + 1
    return ends


class _OutsideBounds:
    """Finds positions where every best tag sequence says "outside" (tag 0), from local bounds only.

    With alpha/beta the best prefix/suffix scores, position t is outside in every best sequence when, for each
    tag y != O, alpha[t,y] + beta[t,y] < alpha[t,O] + beta[t,O]. Upper bounds on alpha[t,y] - alpha[t,O] and
    beta[t,y] - beta[t,O] that look two positions each way (the neighbour's emissions, and the best case for
    everything further) are cheap to compute for all positions at once; where their sum is negative for every y,
    the position is forced. Since O can follow any tag and precede any tag but I-x, the I-x successors are
    bounded through B-x, which O can precede. The Viterbi path then passes a run of forced positions in one
    step, and the result is the same as a full Viterbi's.
    """

    def __init__(self, trans: F32, start: F32, end: F32) -> None:
        tags = len(trans)
        self.trans, self.start, self.end = trans, start, end
        inside = np.zeros(tags, dtype=bool)
        inside[2::2] = True
        self.b_tags = np.arange(1, tags, 2)
        self.i_tags = self.b_tags + 1
        # alpha[t,p] - alpha[t,O] <= (e[t,p] - e[t,O]) + into_one[p]
        self.into_one = (trans - trans[:, :1]).max(axis=0)
        # beta[t,y] - beta[t,O] over successors that O may precede (all but I-x)
        self.out_plain = (trans[:, ~inside] - trans[:1, ~inside]).max(axis=1)
        # beta[t+1,I-x] - beta[t+1,B-x] (same successors allowed), and at the last position
        self.i_over_b = (trans[self.i_tags] - trans[self.b_tags]).max(axis=1)
        self.i_over_b_end = end[self.i_tags] - end[self.b_tags]
        self.col_max = trans[1:].max(axis=0)  # best T[p, y] over p != O
        self.row_max = trans[:, 1:].max(axis=1)  # best T[y, n] over n != O

    def forced(self, emissions: F32) -> npt.NDArray[np.bool_]:
        """For each position: whether every best sequence tags it outside."""
        trans, n = self.trans, len(emissions)
        diff = emissions - emissions[:, :1]  # e[t,y] - e[t,O]
        # alpha side, two steps: alpha[t,y] - alpha[t,O] <= d[t,y] + max(T[O,y], max_p!=O U[t-1,p] + T[p,y]) - T[O,O]
        first = diff[0] + self.start - self.start[0]
        prefix = diff[:-1] + self.into_one
        prefix[0] = first
        best_other = prefix[:, 1:].max(axis=1)
        alpha_side = np.empty_like(diff)
        alpha_side[0] = first
        alpha_side[1:] = diff[1:] + np.maximum(trans[0][None, :], best_other[:, None] + self.col_max) - trans[0, 0]
        # beta side, one step at t+1: bound on (e[t+1,m] + beta[t+1,m]) - (e[t+1,O] + beta[t+1,O])
        step = np.empty_like(diff)
        step[-1] = diff[-1] + self.end - self.end[0]
        if n > 1:
            over = np.tile(self.i_over_b, (n - 1, 1))
            over[-1] = self.i_over_b_end
            # through I-x at t+2, bounded via B-x (which O may precede)
            via_b = diff[1:, self.i_tags] - diff[1:, self.b_tags] + over
            later = np.tile(self.out_plain, (n - 1, 1))
            base_b = trans[self.b_tags, self.i_tags] - trans[0, self.b_tags]
            base_i = trans[self.i_tags, self.i_tags] - trans[0, self.b_tags]
            later[:, self.b_tags] = np.maximum(later[:, self.b_tags], base_b + via_b)
            later[:, self.i_tags] = np.maximum(later[:, self.i_tags], base_i + via_b)
            step[:-1] = diff[:-1] + later
        beta_side = np.empty_like(diff)
        beta_side[-1] = self.end - self.end[0]
        if n > 1:
            nxt = step[1:]
            best_next = nxt[:, 1:].max(axis=1)
            beta_side[:-1] = np.maximum(trans[:, 0][None, :] + nxt[:, :1], self.row_max + best_next[:, None])
            beta_side[:-1] -= trans[0, 0]
        total = alpha_side + beta_side
        total[:, 0] = -1.0
        return np.asarray((total < 0).all(axis=1))


def _pieces(text: str, spans: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Token index ranges of at most MAX_TOKENS, cut after a line break or sentence end where one is near."""
    a, n = 0, len(spans)
    while a < n:
        b = min(n, a + MAX_TOKENS)
        if b < n:
            for cut in range(b, max(a + 1, b - _CUT_LOOKBACK), -1):
                gap = text[spans[cut - 1][1] : spans[cut][0]]
                if "\n" in gap or (gap and text[spans[cut - 1][0]] in ".!?"):
                    b = cut
                    break
        yield a, b
        a = b
