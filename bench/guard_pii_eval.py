"""Score the offline PII detector on presidio-synth-pii under the strict rule in DESIGN.md, and time it.

Strict rule: type-agnostic, one-to-one matching of predicted and gold spans at character IoU >= 0.5 (greedy by
IoU), every prediction the detector returns counted (no score floor). Split: by `template_id` — templates with
`template_id % 3 == 0` are held out (test); the rest trained and tuned the tagger (scripts/train_pii_tagger.py).

Gold sets: `in_scope` (the types the rule-based detector claimed: PERSON, STREET_ADDRESS, CREDIT_CARD,
PHONE_NUMBER, EMAIL_ADDRESS, IBAN_CODE, US_SSN, IP_ADDRESS) and `all` (every gold span, incl. GPE,
ORGANIZATION, DATE_TIME, TITLE, AGE, NRP, ZIP_CODE, DOMAIN_NAME, US_DRIVER_LICENSE).
Detector configurations: `rules` (tagger off: patterns + rule-based names/addresses, the old detector),
`tagger/rule_entities` (tagger on, the in-scope entity list), `tagger/default` (the default entities) and
`tagger/all_entities` (every entity). A configuration is scored on both gold sets; the fair pairs are
rules and rule_entities on `in_scope`, all_entities on `all`.

Gazetteers: the names and places come from Faker, and so did the dataset's values, so `held_out` removes every
word of the test split's gold PERSON, STREET_ADDRESS, GPE, ORGANIZATION, NRP and TITLE spans from the gazetteer
*and* withholds those words' identity features from the tagger (as if never seen in training): the number to
quote for unseen names.

Ordinary text: the default detector also scans two sets of prompts without labelled PII (self-instruct-benign,
only the half whose lines never train the tagger; injecguard-notinject, never used in training) and counts what it
reports there. Some of it is real (names of public figures, an example e-mail address), so the counts bound false
positives from above; they show how much of a normal prompt a `redact` rule would mask.

    python bench/guard_pii_eval.py [--dataset PATH] [--split test|dev|all] [--errors N] [--cpu N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import ModuleType

from gengate.guard.base import ScanRequest
from gengate.guard.detectors.pii import DEFAULT_ENTITIES, ENTITIES, RULE_ENTITIES, PiiDetector
from gengate.guard.detectors.pii_names import Gazetteer
from gengate.guard.detectors.pii_tagger import PiiTagger, TaggerModel

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GENGATE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DATASET = SHARED / "datasets/presidio-synth-pii/original/data/synth_dataset_v2.json"
RESULTS = Path(__file__).parent / "results" / "guard_pii.json"
IN_SCOPE = frozenset(
    {"PERSON", "STREET_ADDRESS", "CREDIT_CARD", "PHONE_NUMBER", "EMAIL_ADDRESS", "IBAN_CODE", "US_SSN", "IP_ADDRESS"}
)
Span = tuple[int, int]


def _training_script() -> ModuleType:
    """scripts/ is not a package: the split definitions are read from the training script, so they cannot drift."""
    spec = importlib.util.spec_from_file_location("train_pii_tagger", ROOT / "scripts" / "train_pii_tagger.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_pii_tagger", module)  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


_SPLITS = _training_script()
in_test = _SPLITS.in_test  # the held-out templates
in_training_half = _SPLITS.in_negative_half  # the self-instruct half whose lines may train the tagger


def iou(a: Span, b: Span) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union else 0.0


def match(pred: list[Span], gold: list[Span]) -> list[tuple[int, int]]:
    """One-to-one pairs (pred index, gold index) with IoU >= 0.5, greedy by IoU."""
    pairs = sorted(
        ((iou(p, g), i, j) for i, p in enumerate(pred) for j, g in enumerate(gold) if iou(p, g) >= 0.5),
        reverse=True,
    )
    used_p: set[int] = set()
    used_g: set[int] = set()
    out = []
    for _, i, j in pairs:
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            out.append((i, j))
    return out


def prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f2 = 5 * p * r / (4 * p + r) if p + r else 0.0
    return {
        "precision": round(p, 3),
        "recall": round(r, 3),
        "f2": round(f2, 3),
        "tp": tp,
        "pred": n_pred,
        "gold": n_gold,
    }


def evaluate(detector: PiiDetector, rows: list[dict[str, object]], scope: frozenset[str] | None) -> dict[str, object]:
    """Strict span scores overall and per gold type."""
    tp = n_pred = n_gold = 0
    per_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # type -> [tp, gold]
    per_label: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # predicted label -> [tp, pred]
    errors: list[dict[str, object]] = []
    for row in rows:
        text = str(row["full_text"])
        gold_rows = [s for s in row["spans"] if scope is None or s["entity_type"] in scope]  # type: ignore[union-attr]
        gold = [(s["start_position"], s["end_position"]) for s in gold_rows]
        findings = detector.scan(ScanRequest(text))
        pred = [(f.start, f.end) for f in findings]
        pairs = match(pred, gold)
        tp += len(pairs)
        n_pred += len(pred)
        n_gold += len(gold)
        matched_g = {j for _, j in pairs}
        matched_p = {i for i, _ in pairs}
        for j, s in enumerate(gold_rows):
            per_type[s["entity_type"]][1] += 1
            per_type[s["entity_type"]][0] += j in matched_g
        for i, f in enumerate(findings):
            per_label[f.label][1] += 1
            per_label[f.label][0] += i in matched_p
        if len(matched_g) < len(gold) or len(matched_p) < len(pred):
            errors.append(
                {
                    "text": text,
                    "missed": [
                        (s["entity_type"], text[g[0] : g[1]])
                        for j, (s, g) in enumerate(zip(gold_rows, gold, strict=True))
                        if j not in matched_g
                    ],
                    "spurious": [
                        (f.label, text[f.start : f.end]) for i, f in enumerate(findings) if i not in matched_p
                    ],
                }
            )
    return {
        "overall": prf(tp, n_pred, n_gold),
        "recall_per_gold_type": {
            k: {"recall": round(v[0] / v[1], 3), "gold": v[1]} for k, v in sorted(per_type.items())
        },
        "precision_per_label": {
            k: {"precision": round(v[0] / v[1], 3), "pred": v[1]} for k, v in sorted(per_label.items())
        },
        "errors": errors,
    }


def latency(detector: PiiDetector, rows: list[dict[str, object]], size: int, n: int = 200) -> dict[str, float]:
    """p50/p95 milliseconds to scan texts of about `size` characters built from dataset sentences."""
    rng = random.Random(size)
    texts = []
    for _ in range(n):
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < size:
            parts.append(str(rng.choice(rows)["full_text"]))
        texts.append(" ".join(parts)[:size])
    for text in texts[:20]:  # warm-up: the tagger caches per-token sums (timed texts still bring new tokens)
        detector.scan(ScanRequest(text))
    times = []
    for text in texts:
        t0 = time.perf_counter()
        detector.scan(ScanRequest(text))
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 3), "p95_ms": round(times[int(0.95 * len(times)) - 1], 3)}


def held_out_words(data: list[dict[str, object]]) -> frozenset[str]:
    """Every word of the test split's gold names, addresses, places, organisations, NRPs and titles."""
    kinds = ("PERSON", "STREET_ADDRESS", "GPE", "ORGANIZATION", "NRP", "TITLE")
    return frozenset(
        w.lower()
        for r in data
        if in_test(int(r["template_id"]))  # type: ignore[call-overload]
        for s in r["spans"]  # type: ignore[attr-defined]
        if s["entity_type"] in kinds
        for w in re.findall(r"[^\W\d_]+", s["entity_value"])
    )


def configurations(held: frozenset[str]) -> dict[str, PiiDetector]:
    """Every detector configuration scored (see module docstring)."""
    shipped = Gazetteer.shipped()
    model = TaggerModel.shipped()
    reduced = shipped.without(held)
    out: dict[str, PiiDetector] = {}
    for gaz_name, gaz, unknown in (("shipped", shipped, frozenset[str]()), ("held_out", reduced, held)):
        tagger = PiiTagger(model, gaz, unknown)
        out[f"rules/{gaz_name}"] = PiiDetector(tagger=False, gazetteer=gaz)
        out[f"tagger/rule_entities/{gaz_name}"] = PiiDetector(entities=RULE_ENTITIES, tagger=tagger)
        out[f"tagger/default/{gaz_name}"] = PiiDetector(entities=DEFAULT_ENTITIES, tagger=tagger)
        out[f"tagger/all_entities/{gaz_name}"] = PiiDetector(entities=ENTITIES, tagger=tagger)
    return out


def pin_to_one_core(cpu: int | None) -> int | None:
    """Run on one CPU (the first one allowed unless `cpu` is given); None where the OS has no affinity."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    chosen = cpu if cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {chosen})
    return chosen


ORDINARY = {"self-instruct-benign": "self-instruct-benign", "injecguard-notinject": "injecguard-notinject"}


def ordinary_text(detector: PiiDetector) -> dict[str, dict[str, object]]:
    """Per prompt set: texts, texts with any finding, findings by label (most frequent first)."""
    out: dict[str, dict[str, object]] = {}
    for name, folder in ORDINARY.items():
        path = SHARED / "datasets" / folder / "normalized.jsonl"
        texts = [str(json.loads(line)["text"]) for line in path.read_text(encoding="utf-8").splitlines() if line]
        if name == "self-instruct-benign":  # the other half's lines may train the tagger (negative examples)
            texts = [t for t in texts if not in_training_half(t)]
        counts: dict[str, int] = defaultdict(int)
        flagged = 0
        for text in texts:
            findings = detector.scan(ScanRequest(text))
            flagged += bool(findings)
            for f in findings:
                counts[f.label] += 1
        ranked = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        out[name] = {"texts": len(texts), "with_findings": flagged, "findings": ranked}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--split", choices=("test", "dev", "all"), default="test")
    parser.add_argument("--errors", type=int, default=0, help="print this many error rows (all_entities, shipped)")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to for the timings")
    args = parser.parse_args()
    data = json.loads(args.dataset.read_text(encoding="utf-8"))
    rows = [r for r in data if args.split == "all" or in_test(int(r["template_id"])) == (args.split == "test")]
    templates = len({r["template_id"] for r in rows})
    configs = configurations(held_out_words(data))
    version = configs["tagger/default/shipped"].version
    report: dict[str, object] = {
        "split": args.split,
        "rows": len(rows),
        "templates": templates,
        "detector_version": version,
        "results": {},
    }
    print(f"presidio-synth-pii split={args.split} rows={len(rows)} templates={templates} (test = template_id % 3 == 0)")
    print(f"detector version {version}")
    print(f"{'config':34} {'gold':9} {'P':>6} {'R':>6} {'F2':>6} {'tp':>5} {'pred':>5} {'gold':>5}")
    details: dict[str, dict[str, object]] = {}
    shown: list[object] = []
    for name, det in configs.items():
        for scope_name, scope in (("in_scope", IN_SCOPE), ("all", None)):
            res = evaluate(det, rows, scope)
            o = res["overall"]
            assert isinstance(o, dict)
            scores = f"{o['precision']:6.3f} {o['recall']:6.3f} {o['f2']:6.3f}"
            counts = f"{o['tp']:5} {o['pred']:5} {o['gold']:5}"
            print(f"{name:34} {scope_name:9} {scores} {counts}")
            errors = res.pop("errors")
            report["results"][f"{name}/{scope_name}"] = res  # type: ignore[index]
            details[f"{name}/{scope_name}"] = res
            if name == "tagger/all_entities/shipped" and scope_name == "all" and isinstance(errors, list):
                shown = errors[: args.errors]
    for key in ("tagger/all_entities/shipped/all", "tagger/default/shipped/all", "rules/shipped/in_scope"):
        print(f"\nrecall per gold type ({key}):")
        for k, v in details[key]["recall_per_gold_type"].items():  # type: ignore[attr-defined]
            print(f"  {k:18} {v['recall']:6.3f}  (n={v['gold']})")
    print("\nprecision per predicted label (tagger/all_entities/shipped):")
    for k, v in details["tagger/all_entities/shipped/all"]["precision_per_label"].items():  # type: ignore[attr-defined]
        print(f"  {k:22} {v['precision']:6.3f}  (n={v['pred']})")
    report["ordinary_text"] = ordinary = ordinary_text(PiiDetector())
    print("\nordinary prompts (no labelled PII), default detector:")
    for name, got in ordinary.items():
        labels = ", ".join(f"{k.removeprefix('pii.')} {v}" for k, v in got["findings"].items())
        print(f"  {name:22} {got['with_findings']:4} of {got['texts']:4} texts with findings ({labels})")
    cpu = pin_to_one_core(args.cpu)
    lat: dict[str, dict[str, dict[str, float]]] = {}
    fresh = {  # new instances, so no configuration inherits another's warm caches
        "rules/shipped": lambda: PiiDetector(tagger=False),
        "tagger/default/shipped": lambda: PiiDetector(),
        "tagger/all_entities/shipped": lambda: PiiDetector(entities=ENTITIES),
    }
    for name, build in fresh.items():
        lat[name] = {f"{size // 1024}KB": latency(build(), data, size) for size in (1024, 8192)}
    report["latency"] = {"cpu": cpu, **lat}
    print(f"\nlatency on one core (CPU {cpu}), ms:")
    for name, cells in lat.items():
        row = "   ".join(f"{cell} p50 {v['p50_ms']:.2f} / p95 {v['p95_ms']:.2f}" for cell, v in cells.items())
        print(f"  {name:28} {row}")
    for e in shown:
        print(json.dumps(e, ensure_ascii=False))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
