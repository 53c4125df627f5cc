"""Train the PII tagger shipped as `src/gengate/guard/data/pii_tagger.npz` (a maintainer tool, numpy only).

Data: presidio-synth-pii (MIT; ../shared/datasets/presidio-synth-pii), read here at training time only; no row
of it is shipped. Split by template, as bench/guard_pii_eval.py does: templates with `template_id % 3 == 0` are
the held-out test set and are dropped as the file is loaded, never used for training or tuning. The settings
(epochs, dropout, refilled copies) were chosen by `--validate`: cross-validation over the training templates,
each fold holding out whole templates (`(template_id // 3) % 5`), scored with the strict rule. The shipped model
is then trained on all training templates with those settings.

Model: an averaged structured perceptron (Collins 2002) over BIO tags (the mean of `--runs` such models trained
with different seeds), features from
`gengate.guard.detectors.pii_features` (the same code the detector runs), Viterbi decoding with the BIO
constraints. Identity and gazetteer features are dropped at random while training (`--drop-ident`,
`--drop-flags`) so the model also learns from shape and context, which is what carries it over unseen names.

    python scripts/train_pii_tagger.py --validate    # template-fold cross-validation of the settings, no artifact
    python scripts/train_pii_tagger.py               # train on all training templates, write the artifact

Also: sentences refilled from the training templates with other values (`refill`, `--copies`), and optionally
PII-free lines of benign prompts as all-outside examples (`--negatives N`; tried, not used for the shipped model:
see docs/guard-pii.md).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import random
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from gengate.guard.base import ScanRequest
from gengate.guard.detectors.pii import ENTITIES, RULE_ENTITIES, PiiDetector
from gengate.guard.detectors.pii_features import Featurizer, WordInfo, line_lengths, position_features, tokenize
from gengate.guard.detectors.pii_names import Gazetteer
from gengate.guard.detectors.pii_tagger import ARTIFACT, PiiTagger, TaggerModel, allowed_transitions

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT.parent / "shared/datasets/presidio-synth-pii/original/data/synth_dataset_v2.json"
OUT = ROOT / "src/gengate/guard/data" / ARTIFACT
# Gold entity type -> tagger class. Types the patterns validate are one class the detector ignores: learning
# them keeps the tagger from calling a card number a phone number, and the patterns find them anyway.
CLASS_OF = {
    "PERSON": "person",
    "STREET_ADDRESS": "street_address",
    "GPE": "location",
    "ORGANIZATION": "organization",
    "DATE_TIME": "date_time",
    "TITLE": "title",
    "AGE": "age",
    "NRP": "nrp",
    "ZIP_CODE": "zip_code",
    "DOMAIN_NAME": "domain_name",
    "US_DRIVER_LICENSE": "driver_license",
    "PHONE_NUMBER": "phone_number",
    "CREDIT_CARD": "validated",
    "IBAN_CODE": "validated",
    "EMAIL_ADDRESS": "validated",
    "US_SSN": "validated",
    "IP_ADDRESS": "validated",
}
CLASSES = tuple(dict.fromkeys(CLASS_OF.values()))
IN_SCOPE = frozenset(
    {"PERSON", "STREET_ADDRESS", "CREDIT_CARD", "PHONE_NUMBER", "EMAIL_ADDRESS", "IBAN_CODE", "US_SSN", "IP_ADDRESS"}
)
Row = dict[str, object]


def in_test(template_id: int) -> bool:
    """The held-out test templates (never used here)."""
    return template_id % 3 == 0


def fold_of(template_id: int, folds: int = 5) -> int:
    """The validation fold of a training template (folds are whole templates)."""
    return (template_id // 3) % folds


@dataclass(slots=True)
class Example:
    """One sentence: its tokens (as featurizer infos), the whitespace between them, the gold tags."""

    infos: list[WordInfo]
    gaps: list[str]
    tags: list[int]
    idents: list[str]


def gold_spans(row: Row) -> list[tuple[int, int, str]]:
    spans = row["spans"]
    assert isinstance(spans, list)
    return [(int(s["start_position"]), int(s["end_position"]), str(s["entity_type"])) for s in spans]


_SLOT = re.compile(r"\{\{(\w+)\}\}")


def refill(
    rows: list[Row], gazetteer: Gazetteer, copies: int, seed: int
) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """New sentences from the rows' own templates (`masked`), slots filled with other values of the same type.

    Values come from the same rows (street addresses only from the same template and slot, since templates
    split addresses differently) and, for names and places, from the Faker gazetteer. This varies the words
    in each context so the tagger learns contexts, not the particular values of a template.
    """
    rng = random.Random(seed)
    pools: dict[str, list[str]] = {}
    slot_pools: dict[tuple[int, int], list[str]] = {}
    for row in rows:
        text = str(row["full_text"])
        for i, (a, b, etype) in enumerate(sorted(gold_spans(row))):
            pools.setdefault(etype, []).append(text[a:b])
            slot_pools.setdefault((int(row["template_id"]), i), []).append(text[a:b])
    first, last = sorted(gazetteer.first), sorted(gazetteer.last)
    places = sorted(gazetteer.places)

    def person() -> str:
        given, family = rng.choice(first).title(), rng.choice(last).title()
        form = rng.random()
        if form < 0.4:
            return f"{given} {family}"
        if form < 0.6:
            return given
        if form < 0.8:
            return family
        return f"{given} {rng.choice('ABCDEFGHJKLMNPRSTW')}{rng.choice(('.', ''))} {family}"

    def place() -> str:
        name = rng.choice(places)
        return name.upper() if rng.random() < 0.2 else name.title()

    out = []
    for row in rows:
        masked, text = str(row["masked"]), str(row["full_text"])
        slots = list(_SLOT.finditer(masked))
        spans = sorted(gold_spans(row))
        if len(slots) != len(spans):
            continue
        lower = text == text.lower() and text != text.upper()
        for _ in range(copies):
            pieces: list[str] = []
            gold: list[tuple[int, int, str]] = []
            pos = length = 0
            for i, (slot, (a, b, etype)) in enumerate(zip(slots, spans, strict=True)):
                value = text[a:b]
                if etype == "STREET_ADDRESS":
                    value = rng.choice(slot_pools.get((int(row["template_id"]), i), [value]))
                elif etype == "PERSON" and rng.random() < 0.5:
                    value = person()
                elif etype == "GPE" and rng.random() < 0.5:
                    value = place()
                else:
                    value = rng.choice(pools[etype])
                if lower:
                    value = value.lower()
                literal = masked[pos : slot.start()]
                pieces += [literal, value]
                length += len(literal)
                gold.append((length, length + len(value), etype))
                length += len(value)
                pos = slot.end()
            pieces.append(masked[pos:])
            sentence = "".join(pieces)
            out.append((sentence.lower() if lower else sentence, gold))
    return out


def make_example(featurizer: Featurizer, text: str, gold: list[tuple[int, int, str]]) -> Example:
    """Tokens with BIO tags: a token belongs to a gold span when most of it lies inside."""
    spans = tokenize(text)
    tags = [0] * len(spans)
    owner = [-1] * len(spans)
    for g, (start, end, etype) in enumerate(sorted(gold, key=lambda s: (s[0], -s[1]))):
        k = CLASSES.index(CLASS_OF[etype])
        first = True
        for i, (a, b) in enumerate(spans):
            inside = min(b, end) - max(a, start)
            if inside * 2 > b - a and owner[i] == -1:
                tags[i] = 1 + 2 * k if first else 2 + 2 * k
                owner[i] = g
                first = False
    infos = [featurizer.word(text[a:b]) for a, b in spans]
    edges = [0, *(b for _, b in spans)]
    gaps = [text[edges[i] : spans[i][0]] for i in range(len(spans))] + [text[edges[-1] :]]
    return Example(infos, gaps, tags, [i.ident for i in infos])


class Perceptron:
    """Averaged structured perceptron with the lazy averaging trick (w_avg = w - u / c)."""

    def __init__(self, n_tags: int, allowed: np.ndarray) -> None:
        self.index: dict[str, int] = {}
        self.n_tags = n_tags
        self.w = np.zeros((1 << 16, n_tags), dtype=np.float64)
        self.u = np.zeros_like(self.w)
        self.trans = np.zeros((n_tags, n_tags))
        self.trans_u = np.zeros_like(self.trans)
        self.start = np.zeros(n_tags)
        self.start_u = np.zeros_like(self.start)
        self.end = np.zeros(n_tags)
        self.end_u = np.zeros_like(self.end)
        self.mask = np.where(allowed, 0.0, -1e4)
        self.start_mask = self.mask[0]
        self.c = 1

    def ids(self, names: list[str]) -> np.ndarray:
        out = []
        for name in names:
            i = self.index.get(name)
            if i is None:
                i = self.index[name] = len(self.index)
                if i >= len(self.w):
                    self.w = np.vstack([self.w, np.zeros_like(self.w)])
                    self.u = np.vstack([self.u, np.zeros_like(self.u)])
            out.append(i)
        return np.asarray(out, dtype=np.intp)

    def viterbi(self, emissions: np.ndarray) -> list[int]:
        n = len(emissions)
        trans = self.trans + self.mask
        score = self.start + self.start_mask + emissions[0]
        back = np.zeros((n, self.n_tags), dtype=np.intp)
        for t in range(1, n):
            s = score[:, None] + trans
            back[t] = s.argmax(axis=0)
            score = s.max(axis=0) + emissions[t]
        path = [int((score + self.end).argmax())]
        for t in range(n - 1, 0, -1):
            path.append(int(back[t][path[-1]]))
        return path[::-1]

    def update(self, feats: list[np.ndarray], gold: list[int], pred: list[int]) -> None:
        c = self.c
        for t, (g, p) in enumerate(zip(gold, pred, strict=True)):
            if g != p:
                for tag, d in ((g, 1.0), (p, -1.0)):
                    np.add.at(self.w[:, tag], feats[t], d)
                    np.add.at(self.u[:, tag], feats[t], c * d)
        for seq, d in ((gold, 1.0), (pred, -1.0)):
            self.start[seq[0]] += d
            self.start_u[seq[0]] += c * d
            self.end[seq[-1]] += d
            self.end_u[seq[-1]] += c * d
            for a, b in itertools.pairwise(seq):
                self.trans[a, b] += d
                self.trans_u[a, b] += c * d

    def averaged(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        n = len(self.index)
        c = self.c
        return (
            self.w[:n] - self.u[:n] / c,
            self.trans - self.trans_u / c,
            self.start - self.start_u / c,
            self.end - self.end_u / c,
        )


def train(
    examples: list[Example], epochs: int, drop_ident: float, drop_flags: float, seed: int, log: bool = True
) -> list[TaggerModel]:
    """One model per epoch (averaged weights after that epoch)."""
    out: list[TaggerModel] = []
    train_perceptron(examples, epochs, drop_ident, drop_flags, seed, log, out)
    return out


def train_perceptron(
    examples: list[Example],
    epochs: int,
    drop_ident: float,
    drop_flags: float,
    seed: int,
    log: bool = True,
    snapshots: list[TaggerModel] | None = None,
) -> Perceptron:
    """Train; with `snapshots`, append the averaged model after each epoch."""
    rng = random.Random(seed)
    model = Perceptron(1 + 2 * len(CLASSES), allowed_transitions(CLASSES))
    order = list(range(len(examples)))
    for epoch in range(epochs):
        rng.shuffle(order)
        t0, mistakes = time.perf_counter(), 0
        for k in order:
            ex = examples[k]
            n = len(ex.infos)
            if n == 0:
                continue
            known = [rng.random() >= drop_ident for _ in range(n)]
            flagged = [rng.random() >= drop_flags for _ in range(n)]
            lines = line_lengths(ex.gaps)
            feats = [model.ids(position_features(ex.infos, ex.gaps, t, known, flagged, lines)) for t in range(n)]
            emissions = np.stack([model.w[f].sum(axis=0) for f in feats])
            pred = model.viterbi(emissions)
            if pred != ex.tags:
                mistakes += 1
                model.update(feats, ex.tags, pred)
            model.c += 1
        if log:
            took = time.perf_counter() - t0
            print(f"  epoch {epoch + 1}: {mistakes} sentences wrong, {len(model.index)} features, {took:.1f}s")
        if snapshots is not None:
            snapshots.append(to_model(model, {"epochs": epoch + 1}))
    return model


def to_model(p: Perceptron, meta: dict[str, object], prune: float = 0.0) -> TaggerModel:
    w, trans, start, end = p.averaged()
    names = sorted(p.index, key=p.index.__getitem__)
    keep = np.abs(w).max(axis=1) > prune
    keep[p.index["b"]] = True
    rows = np.flatnonzero(keep)
    features = {names[i]: j for j, i in enumerate(rows)}
    return TaggerModel(
        CLASSES,
        features,
        w[rows].astype(np.float32),
        trans.astype(np.float32),
        start.astype(np.float32),
        end.astype(np.float32),
        dict(meta),
        "unsaved",
    )


def merge(models: list[TaggerModel], meta: dict[str, object], prune: float) -> TaggerModel:
    """The mean of several models (features matched by name), without features whose weights all stay under
    `prune`: averaging runs with different shuffles, dropout and refills lowers the variance of one run."""
    names = sorted(set().union(*(m.features for m in models)))
    index = {n: i for i, n in enumerate(names)}
    weights = np.zeros((len(names), len(models[0].transitions)), dtype=np.float32)
    for m in models:
        rows = np.array([index[n] for n in sorted(m.features, key=m.features.__getitem__)], dtype=np.intp)
        weights[rows] += m.weights
    weights /= len(models)
    keep = np.abs(weights).max(axis=1) > prune
    keep[index["b"]] = True
    kept = np.flatnonzero(keep)
    return TaggerModel(
        CLASSES,
        {names[i]: j for j, i in enumerate(kept)},
        weights[kept],
        (sum(m.transitions for m in models) / len(models)).astype(np.float32),
        (sum(m.start for m in models) / len(models)).astype(np.float32),
        (sum(m.end for m in models) / len(models)).astype(np.float32),
        dict(meta),
        "unsaved",
    )


def score_scale(model: TaggerModel, rows: list[Row], gazetteer: Gazetteer) -> float:
    """The median margin of the spans the model finds in `rows`: a span that clears "outside" by this much
    scores 0.75 (see `PiiTagger.find`)."""
    tagger = PiiTagger(model, gazetteer)
    margins: list[float] = []
    for row in rows:
        text = str(row["full_text"])
        if spans := tokenize(text):
            margins += [m for _, _, _, m in tagger.decode(tagger.emissions(text, spans))]
    # score = 1 - exp(-margin / scale) / 2, which is 0.75 at margin = scale * ln 2
    return round(float(np.median(margins)) / math.log(2), 3) if margins else 1.0


def iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union else 0.0


def strict_counts(detector: PiiDetector, rows: list[Row], scope: frozenset[str] | None) -> tuple[int, int, int]:
    """(true positives, predictions, gold spans) under the strict rule of bench/guard_pii_eval.py: type-agnostic,
    one-to-one matching at IoU >= 0.5 (greedy by IoU), every prediction counted."""
    tp = n_pred = n_gold = 0
    for row in rows:
        gold = [(a, b) for a, b, t in gold_spans(row) if scope is None or t in scope]
        pred = [(f.start, f.end) for f in detector.scan(ScanRequest(str(row["full_text"])))]
        pairs = sorted(((iou(p, g), i, j) for i, p in enumerate(pred) for j, g in enumerate(gold)), reverse=True)
        used_p: set[int] = set()
        used_g: set[int] = set()
        for score, i, j in pairs:
            if score >= 0.5 and i not in used_p and j not in used_g:
                used_p.add(i)
                used_g.add(j)
        tp += len(used_p)
        n_pred += len(pred)
        n_gold += len(gold)
    return tp, n_pred, n_gold


def f2(counts: tuple[int, int, int]) -> dict[str, float]:
    tp, n_pred, n_gold = counts
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"p": round(p, 3), "r": round(r, 3), "f2": round(5 * p * r / (4 * p + r) if p + r else 0.0, 3)}


def held_words(rows: list[Row]) -> frozenset[str]:
    """Words of the rows' gold names, addresses, places, organisations, NRPs and titles (see the bench)."""
    kinds = ("PERSON", "STREET_ADDRESS", "GPE", "ORGANIZATION", "NRP", "TITLE")
    spans = [s for r in rows for s in r["spans"] if s["entity_type"] in kinds]  # type: ignore[attr-defined]
    return frozenset(w.lower() for s in spans for w in re.findall(r"[^\W\d_]+", s["entity_value"]))


def validation_counts(
    model: TaggerModel, rows: list[Row], gazetteer: Gazetteer, bias: float = 0.0
) -> dict[str, tuple[int, int, int]]:
    """Counts on held-out rows: all gold types with all entities, in-scope types with the rule entities; `seen`
    with the shipped gazetteer, `unseen` with the rows' own words removed from it and withheld from the
    tagger's vocabulary."""
    out = {}
    held = held_words(rows)
    for variant, gaz, unknown in (("seen", gazetteer, frozenset()), ("unseen", gazetteer.without(held), held)):
        tagger = PiiTagger(model, gaz, unknown, outside_bias=bias)
        out[f"{variant}/all"] = strict_counts(PiiDetector(entities=ENTITIES, tagger=tagger), rows, None)
        out[f"{variant}/in_scope"] = strict_counts(PiiDetector(entities=RULE_ENTITIES, tagger=tagger), rows, IN_SCOPE)
    return out


def examples_for(
    rows: list[Row],
    featurizer: Featurizer,
    copies: int,
    seed: int,
    negatives: list[str] = (),  # type: ignore[assignment]
) -> list[Example]:
    """The rows as examples, plus `copies` refilled variants of each (see `refill`), plus `negatives` (lines with
    no PII: every tag outside)."""
    base = [make_example(featurizer, str(r["full_text"]), gold_spans(r)) for r in rows]
    extra = [make_example(featurizer, t, g) for t, g in refill(rows, featurizer.gazetteer, copies, seed)]
    return base + extra + [make_example(featurizer, line, []) for line in negatives]


NEGATIVES = ROOT.parent / "shared/datasets/self-instruct-benign/normalized.jsonl"
_SENTENCE_START = re.compile(r"(?:^|[.!?:]\s+|^\W*)$")


def in_negative_half(text: str) -> bool:
    """The half of the benign prompts whose lines may train (the other half measures, in bench/guard_pii_eval.py)."""
    return hashlib.sha256(text.encode("utf-8")).digest()[0] % 2 == 0


def negative_lines(path: Path, limit: int) -> list[str]:
    """Lines of benign prompts (self-instruct-benign, Apache-2.0; the training half only) that hold no PII by
    construction: capitals only where a sentence or line begins, no digits, no "@". Names of public figures in
    these prompts are capitalised mid-sentence, so no real name is ever labelled outside."""
    out: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        text = str(json.loads(raw)["text"]) if raw.strip() else ""
        if not text or not in_negative_half(text):
            continue
        for line in text.splitlines():
            line = line.strip()
            if not 3 <= len(line) <= 300 or "@" in line or any(ch.isdigit() for ch in line):
                continue
            spans = tokenize(line)
            if all(not line[a:b][:1].isupper() or _SENTENCE_START.search(line[:a]) for a, b in spans):
                out.append(line)
    return out[:limit]


def cross_validate(rows: list[Row], gazetteer: Gazetteer, args: argparse.Namespace) -> None:
    """Template-fold cross-validation of the settings on the training templates (prints micro-averaged F2)."""
    featurizer = Featurizer(gazetteer)
    negatives = negative_lines(args.negatives_file, args.negatives) if args.negatives else []
    print(f"  {len(negatives)} negative lines", file=sys.stderr)
    epochs = sorted({max(1, args.epochs // 2), args.epochs, args.epochs + args.epochs // 2})
    totals: dict[tuple[int, str], list[int]] = {}
    for k in range(args.folds):
        fit = [r for r in rows if fold_of(int(r["template_id"]), args.folds) != k]
        val = [r for r in rows if fold_of(int(r["template_id"]), args.folds) == k]
        per_seed = []
        for seed in range(args.seed, args.seed + args.runs):
            examples = examples_for(fit, featurizer, args.copies, seed, negatives)
            per_seed.append(train(examples, max(epochs), args.drop_ident, args.drop_flags, seed, log=False))
        for e in epochs:
            model = merge([models[e - 1] for models in per_seed], {}, args.prune)
            for bias in args.outside_bias:
                for key, counts in validation_counts(model, val, gazetteer, bias).items():
                    total = totals.setdefault((e, bias, key), [0, 0, 0])
                    for i, c in enumerate(counts):
                        total[i] += c
        print(f"  fold {k + 1}/{args.folds} done", file=sys.stderr)
    for e in epochs:
        for bias in args.outside_bias:
            scores = {key: f2((t[0], t[1], t[2])) for (ee, b, key), t in totals.items() if (ee, b) == (e, bias)}
            print(f"epochs={e} outside_bias={bias:g} {json.dumps(scores)}")


def load(dataset: Path) -> list[Row]:
    rows = json.loads(dataset.read_text(encoding="utf-8"))
    assert isinstance(rows, list)
    return [r for r in rows if not in_test(int(r["template_id"]))]  # the test templates are dropped on load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--validate", action="store_true", help="cross-validate on the training templates only")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--copies", type=int, default=2, help="refilled copies of each training sentence")
    parser.add_argument("--drop-ident", type=float, default=0.3)
    parser.add_argument("--drop-flags", type=float, default=0.3)
    parser.add_argument("--prune", type=float, default=0.05, help="drop features whose weights all stay below")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--runs", type=int, default=3, help="models (seeds) averaged into the shipped one")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--outside-bias",
        type=float,
        nargs="+",
        default=[0.0],
        help="with --validate: decoding biases towards entities to compare (PiiTagger.outside_bias)",
    )
    parser.add_argument("--negatives", type=int, default=0, help="at most this many PII-free lines (0: none)")
    parser.add_argument("--negatives-file", type=Path, default=NEGATIVES)
    args = parser.parse_args()
    rows = load(args.dataset)
    gazetteer = Gazetteer.shipped()
    templates = len({r["template_id"] for r in rows})
    print(f"training rows (test templates dropped): {len(rows)} from {templates} templates", file=sys.stderr)
    if args.validate:
        cross_validate(rows, gazetteer, args)
        return
    t0 = time.perf_counter()
    featurizer = Featurizer(gazetteer)
    negatives = negative_lines(args.negatives_file, args.negatives) if args.negatives else []
    runs = []
    for seed in range(args.seed, args.seed + args.runs):
        print(f"run with seed {seed}", file=sys.stderr)
        examples = examples_for(rows, featurizer, args.copies, seed, negatives)
        perceptron = train_perceptron(examples, args.epochs, args.drop_ident, args.drop_flags, seed)
        runs.append(to_model(perceptron, {}))
    meta: dict[str, object] = {
        "epochs": args.epochs,
        "copies": args.copies,
        "drop_ident": args.drop_ident,
        "drop_flags": args.drop_flags,
        "seeds": list(range(args.seed, args.seed + args.runs)),
        "prune": args.prune,
        "training_rows": len(rows),
        "training_templates": templates,
        "split": "presidio-synth-pii templates with template_id % 3 != 0",
        **({"negatives": len(negatives)} if negatives else {}),
    }
    model = merge(runs, meta, args.prune)
    model = replace(model, meta={**meta, "score_scale": score_scale(model, rows, gazetteer)})
    artifact = model.to_bytes()
    args.out.write_bytes(artifact)
    took = time.perf_counter() - t0
    print(f"wrote {args.out}: {len(model.features)} features, {len(artifact)} bytes, {took:.0f}s")


if __name__ == "__main__":
    main()
