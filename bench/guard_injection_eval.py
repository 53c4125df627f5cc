"""Evaluate the shipped injection artifact on held-out (test-split) data only, and time it.

    python bench/guard_injection_eval.py [--data ../shared/datasets]

Prints a table and writes bench/results/guard_injection.json. The split is the one defined in
scripts/train_injection.py (see docs/guard-injection.md); no row used for training or thresholds is scored here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from gengate.guard.base import ScanRequest, Stage
from gengate.guard.detectors.injection import InjectionDetector, score_text

ROOT = Path(__file__).resolve().parents[1]


def load_training_module() -> ModuleType:
    """scripts/ is not a package: load the split definitions from the training script by path."""
    spec = importlib.util.spec_from_file_location("train_injection", ROOT / "scripts" / "train_injection.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_injection", module)  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def recall_at_fpr(pos: list[float], neg: list[float], fpr: float) -> float | None:
    """Recall at the loosest threshold whose FPR on `neg` is <= fpr (None when `neg` is too small to say)."""
    # With n negatives the finest measurable FPR is 1/n: below that this is recall at zero false positives.
    s = sorted(neg, reverse=True)
    allowed = int(np.floor(fpr * len(s)))
    t = np.nextafter(s[allowed], 2.0) if allowed < len(s) else 0.0
    return float(np.mean(np.array(pos) >= t))


def at_threshold(pos: list[float], neg: list[float], t: float) -> dict[str, float]:
    """Precision, recall, F1 and FPR at a fixed threshold."""
    tp = sum(p >= t for p in pos)
    fp = sum(n >= t for n in neg)
    recall = tp / len(pos) if pos else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "fpr": fp / len(neg) if neg else 0.0}


def latency(detector: InjectionDetector, text: str, stage: Stage, runs: int = 300) -> dict[str, float]:
    """p50/p95 milliseconds of one scan on one core (after a warm-up)."""
    req = ScanRequest(text=text, stage=stage)
    for _ in range(20):
        detector.scan(req)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        detector.scan(req)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"p50_ms": statistics.median(times), "p95_ms": times[int(0.95 * len(times)) - 1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "guard_injection.json")
    args = parser.parse_args()

    tm = load_training_module()
    corpus = tm.load_corpus(args.data)
    det = InjectionDetector()
    t_in, t_ctx = det.thresholds[Stage.INPUT], det.thresholds[Stage.CONTEXT]
    model = det.model

    def scores(rows: list[Any], stage: Stage = Stage.INPUT) -> list[float]:
        return [score_text(model, r.text, stage).score for r in rows]

    test = [r for r in corpus.rows if r.split == "test"]
    by = {name: [r for r in test if r.dataset == name] for name in sorted({r.dataset for r in test})}
    s = {name: scores(rows) for name, rows in by.items()}
    benign_pool = [x for name in by for x, r in zip(s[name], by[name], strict=True) if r.label == 0]
    result: dict[str, Any] = {
        "version": det.version,
        "thresholds": {"input": t_in, "context": t_ctx},
        "benign_pool_size": len(benign_pool),
        "prompt_sets": {},
        "benign_sets": {},
        "bipia": {},
        "latency": {},
    }
    rows_out = []
    for name in ("deepset", "jailbreakbench"):
        pos = [x for x, r in zip(s[name], by[name], strict=True) if r.label == 1]
        entry = {
            "n_pos": len(pos),
            "recall_at_1pct_fpr": recall_at_fpr(pos, benign_pool, 0.01),
            "recall_at_0.1pct_fpr": recall_at_fpr(pos, benign_pool, 0.001),
            "at_input_threshold": at_threshold(pos, benign_pool, t_in),
        }
        if name == "deepset":
            neg = [x for x, r in zip(s[name], by[name], strict=True) if r.label == 0]
            entry["within_deepset_test"] = at_threshold(pos, neg, t_in)
        if name == "jailbreakbench":
            per_method: dict[str, list[float]] = {}
            for x, r in zip(s[name], by[name], strict=True):
                per_method.setdefault(r.source.split("/")[1], []).append(x)
            entry["recall_by_method_at_input_threshold"] = {
                k: float(np.mean(np.array(v) >= t_in)) for k, v in sorted(per_method.items())
            }
        result["prompt_sets"][name] = entry
        rows_out.append((name, entry))
    for name in ("notinject", "wildguard", "self-instruct", "deepset"):
        neg = [x for x, r in zip(s[name], by[name], strict=True) if r.label == 0]
        result["benign_sets"][name] = {
            "n": len(neg),
            "fpr_input": float(np.mean(np.array(neg) >= t_in)),
            "fpr_context": float(
                np.mean(np.array(scores([r for r in by[name] if r.label == 0], Stage.CONTEXT)) >= t_ctx)
            ),
            "over_defence_accuracy_input": float(np.mean(np.array(neg) < t_in)),
        }

    # BIPIA: held-out test payloads (categories never seen) into held-out test contexts at start/middle/end.
    rng = random.Random("bench-bipia")
    ctx = [c.text for c in corpus.contexts if c.split == "test"]
    payloads = [p for p in corpus.payloads if p.split == "test"]
    clean = scores([c for c in corpus.contexts if c.split == "test"], Stage.CONTEXT)
    for position in ("start", "middle", "end"):
        pos = []
        for p in payloads:
            for c in rng.sample(ctx, 4):
                pos.append(score_text(model, tm.insert_payload(c, p.text, position), Stage.CONTEXT).score)
        result["bipia"][position] = {
            "n_pos": len(pos),
            "n_clean": len(clean),
            "recall_at_1pct_fpr": recall_at_fpr(pos, clean, 0.01),
            "recall_at_0.1pct_fpr": recall_at_fpr(pos, clean, 0.001),
            "at_context_threshold": at_threshold(pos, clean, t_ctx),
        }
    # Latency on 1 KB and 8 KB of ordinary text (clean contexts), at both stages.
    long_text = "\n".join(ctx)
    for size in (1024, 8192):
        text = long_text[:size]
        result["latency"][f"{size // 1024}KB"] = {
            "input": latency(det, text, Stage.INPUT),
            "context": latency(det, text, Stage.CONTEXT),
        }

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"artifact {det.version}  thresholds input={t_in:.3f} context={t_ctx:.3f}  benign pool n={len(benign_pool)}")
    print(f"{'held-out set':<26}{'n+':>6}{'R@1%FPR':>9}{'R@0.1%':>9}{'P@thr':>8}{'R@thr':>8}{'F1@thr':>8}")
    for name, e in rows_out:
        a = e["at_input_threshold"]
        print(
            f"{name:<26}{e['n_pos']:>6}{e['recall_at_1pct_fpr']:>9.3f}{e['recall_at_0.1pct_fpr']:>9.3f}"
            f"{a['precision']:>8.3f}{a['recall']:>8.3f}{a['f1']:>8.3f}"
        )
    for position, e in result["bipia"].items():
        a = e["at_context_threshold"]
        print(
            f"{'bipia-' + position + ' (ctx thr)':<26}{e['n_pos']:>6}{e['recall_at_1pct_fpr']:>9.3f}"
            f"{e['recall_at_0.1pct_fpr']:>9.3f}{a['precision']:>8.3f}{a['recall']:>8.3f}{a['f1']:>8.3f}"
        )
    print(f"\n{'benign held-out set':<26}{'n':>6}{'FPR@in':>9}{'FPR@ctx':>9}{'acc@in':>9}")
    for name, e in result["benign_sets"].items():
        print(
            f"{name:<26}{e['n']:>6}{e['fpr_input']:>9.3f}{e['fpr_context']:>9.3f}{e['over_defence_accuracy_input']:>9.3f}"
        )
    print(f"bipia clean test contexts: FPR@ctx {result['bipia']['start']['at_context_threshold']['fpr']:.3f}")
    print("\nlatency (ms)        input p50/p95    context p50/p95")
    for size, e in result["latency"].items():
        print(
            f"{size:<20}{e['input']['p50_ms']:>6.2f}/{e['input']['p95_ms']:<8.2f}"
            f"{e['context']['p50_ms']:>8.2f}/{e['context']['p95_ms']:.2f}"
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
