"""Evaluate the shipped injection artifact on held-out (test-split) data only, and time it.

    python bench/guard_injection_eval.py [--data ../shared/datasets] [--texts 200]

Two modes of the same artifact: `stage1` (embeddings: off — the n-gram and rule model alone) and `cascade`
(embeddings: auto — texts in the uncertain band also go through the MiniLM head; only when the model package is
installed). Prints a table and writes bench/results/guard_injection.json. The split is the one defined in
scripts/train_injection.py (see docs/guard-injection.md); no row used for training, stacking or thresholds is
scored here. The red-team rows score our own generated attacks (`gengate.eval.redteam_suites`), which the training
script never reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def load_training_module() -> ModuleType:
    """scripts/ is not a package: load the split definitions from the training script by path."""
    spec = importlib.util.spec_from_file_location("train_injection", ROOT / "scripts" / "train_injection.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_injection", module)  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def recall_at_fpr(pos: list[float], neg: list[float], fpr: float) -> float:
    """Recall at the loosest threshold whose FPR on `neg` is <= fpr."""
    import numpy as np

    # With n negatives the finest measurable FPR is 1/n: below that this is recall at zero false positives.
    s = sorted(neg, reverse=True)
    allowed = int(np.floor(fpr * len(s)))
    t = np.nextafter(s[allowed], 2.0) if allowed < len(s) else 0.0
    return float(np.mean(np.array(pos) >= t))


def at_operating_point(pos: list[bool], neg: list[bool]) -> dict[str, float]:
    """Precision, recall, F1 and FPR of the detector's own decisions (its shipped thresholds)."""
    tp, fp = sum(pos), sum(neg)
    recall = tp / len(pos) if pos else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "fpr": fp / len(neg) if neg else 0.0}


def sized_texts(pieces: list[str], size: int, n: int, seed: str) -> list[str]:
    """`n` distinct texts of exactly `size` characters, each made of randomly chosen pieces."""
    rng = random.Random(f"{seed}-{size}")
    out = []
    for _ in range(n):
        parts: list[str] = []
        while sum(len(p) + 2 for p in parts) < size:
            parts.append(rng.choice(pieces))
        out.append("\n\n".join(parts)[:size])
    return out


def latency(det: Any, texts: list[str], stage: Any, repeats: int = 3) -> dict[str, float]:
    """p50/p95/p99 ms of one decision per text (after a warm-up), the share of texts that reached the encoder and
    the p50/p95 of those. Each text is timed `repeats` times: `p*_ms` count every run; `best_of_*` keep each
    text's fastest run, which discounts time stolen by other processes on a shared machine."""
    for text in texts[:10]:
        det.assess(text, stage)
    runs: list[float] = []
    best: list[float] = []
    embedded: list[float] = []
    for text in texts:
        mine = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = det.assess(text, stage)
            mine.append((time.perf_counter() - t0) * 1000)
        runs += mine
        best.append(min(mine))
        if result.embedded:
            embedded.append(min(mine))

    def pct(xs: list[float], q: float) -> float:
        xs = sorted(xs)
        return xs[max(0, int(q * len(xs)) - 1)]

    out = {"p50_ms": statistics.median(runs), "p95_ms": pct(runs, 0.95), "p99_ms": pct(runs, 0.99)}
    out |= {"best_of_runs_p50_ms": statistics.median(best), "best_of_runs_p95_ms": pct(best, 0.95)}
    out["embedded_share"] = len(embedded) / len(texts)
    if embedded:
        out["embedded_p50_ms"] = statistics.median(embedded)
        out["embedded_p95_ms"] = pct(embedded, 0.95)
    return out


def redteam(det: Any, stage_cls: Any) -> dict[str, dict[str, Any]]:
    """Share of the built-in red-team attacks (direct suites at INPUT, poisoned documents at CONTEXT) flagged."""
    from gengate.eval import redteam_suites as rs

    markers = rs.Markers(7)
    out: dict[str, dict[str, Any]] = {}
    for suite in (rs.encoding, rs.multilingual, rs.roleplay, rs.delimiter):
        attacks = suite(markers)
        missed = sorted({a.technique for a in attacks if not det.assess(a.payload, stage_cls.INPUT).flagged})
        hits = sum(det.assess(a.payload, stage_cls.INPUT).flagged for a in attacks)
        out[suite.__name__] = {"n": len(attacks), "flagged": hits / len(attacks), "missed_techniques": missed}
    docs = [a for a in rs.indirect(markers) if a.document is not None]
    flags = [det.assess(a.document.text, stage_cls.CONTEXT).flagged for a in docs]  # type: ignore[union-attr]
    out["indirect (context)"] = {
        "n": len(docs),
        "flagged": sum(flags) / len(docs),
        "missed_techniques": sorted({a.technique for a, f in zip(docs, flags, strict=True) if not f}),
    }
    return out


def evaluate(det: Any, tm: ModuleType, corpus: Any, stage_cls: Any, texts_per_cell: int) -> dict[str, Any]:
    """Every held-out figure for one detector configuration."""
    import numpy as np

    input_stage, context_stage = stage_cls.INPUT, stage_cls.CONTEXT
    test = [r for r in corpus.rows if r.split == "test"]
    by = {name: [r for r in test if r.dataset == name] for name in sorted({r.dataset for r in test})}
    assessed = {name: [det.assess(r.text, input_stage) for r in rows] for name, rows in by.items()}
    first = {name: [a.first.score for a in items] for name, items in assessed.items()}
    flags = {name: [a.flagged for a in items] for name, items in assessed.items()}
    pool_scores = [x for n in by for x, r in zip(first[n], by[n], strict=True) if r.label == 0]
    pool_flags = [x for n in by for x, r in zip(flags[n], by[n], strict=True) if r.label == 0]
    # With the encoder: the combined score of stage 1 and the MiniLM head for every prompt (not only those in the
    # band), so the embedding stage can be judged on a curve and not only at the shipped operating point.
    stacked: dict[str, list[float]] | None = None
    pool_stacked: list[float] = []
    cascade = det.cascades.get(input_stage)
    if det.encoder is not None and cascade is not None:
        from gengate.guard.detectors.injection import embed_score

        stacked = {
            name: [embed_score(det.model, det.encoder, a.first, input_stage, cascade) for a in items]
            for name, items in assessed.items()
        }
        pool_stacked = [x for n in by for x, r in zip(stacked[n], by[n], strict=True) if r.label == 0]
    result: dict[str, Any] = {
        "version": det.version,
        "thresholds": {s.value: t for s, t in det.thresholds.items()},
        "cascade": {s.value: dataclasses.asdict(c) for s, c in det.cascades.items()},
        "benign_pool_size": len(pool_scores),
        "benign_pool_fpr": float(np.mean(pool_flags)),
        "prompt_sets": {},
        "benign_sets": {},
        "bipia": {},
        "latency": {},
    }
    for name in ("deepset", "jailbreakbench"):
        pos_s = [x for x, r in zip(first[name], by[name], strict=True) if r.label == 1]
        pos_f = [x for x, r in zip(flags[name], by[name], strict=True) if r.label == 1]
        entry: dict[str, Any] = {
            "n_pos": len(pos_s),
            "stage1_recall_at_1pct_fpr": recall_at_fpr(pos_s, pool_scores, 0.01),
            "stage1_recall_at_0.1pct_fpr": recall_at_fpr(pos_s, pool_scores, 0.001),
            "at_operating_point": at_operating_point(pos_f, pool_flags),
        }
        if stacked is not None:
            pos_x = [x for x, r in zip(stacked[name], by[name], strict=True) if r.label == 1]
            entry["every_text_embedded_recall_at_1pct_fpr"] = recall_at_fpr(pos_x, pool_stacked, 0.01)
            entry["every_text_embedded_recall_at_0.1pct_fpr"] = recall_at_fpr(pos_x, pool_stacked, 0.001)
        if name == "jailbreakbench":
            per_method: dict[str, list[bool]] = {}
            for f, r in zip(flags[name], by[name], strict=True):
                per_method.setdefault(r.source.split("/")[1], []).append(f)
            entry["recall_by_method"] = {k: float(np.mean(v)) for k, v in sorted(per_method.items())}
        result["prompt_sets"][name] = entry
    for name in ("notinject", "wildguard", "self-instruct", "deepset"):
        rows = [r for r in by[name] if r.label == 0]
        neg = [f for f, r in zip(flags[name], by[name], strict=True) if r.label == 0]
        ctx = [det.assess(r.text, context_stage).flagged for r in rows]
        result["benign_sets"][name] = {
            "n": len(neg),
            "fpr_input": float(np.mean(neg)),
            "fpr_context": float(np.mean(ctx)),
            "over_defence_accuracy_input": 1.0 - float(np.mean(neg)),
        }
    # BIPIA: held-out test payloads (categories never seen) into held-out test contexts at start/middle/end.
    rng = random.Random("bench-bipia")
    ctx_texts = [c.text for c in corpus.contexts if c.split == "test"]
    payloads = [p for p in corpus.payloads if p.split == "test"]
    clean = [det.assess(t, context_stage) for t in ctx_texts]
    for position in ("start", "middle", "end"):
        pos = []
        for p in payloads:
            for c in rng.sample(ctx_texts, 4):
                pos.append(det.assess(tm.insert_payload(c, p.text, position), context_stage))
        result["bipia"][position] = {
            "n_pos": len(pos),
            "n_clean": len(clean),
            "stage1_recall_at_1pct_fpr": recall_at_fpr(
                [a.first.score for a in pos], [a.first.score for a in clean], 0.01
            ),
            "stage1_recall_at_0.1pct_fpr": recall_at_fpr(
                [a.first.score for a in pos], [a.first.score for a in clean], 0.001
            ),
            "at_operating_point": at_operating_point([a.flagged for a in pos], [a.flagged for a in clean]),
        }
    result["redteam"] = redteam(det, stage_cls)
    # Latency over distinct 1 KB / 8 KB texts: held-out benign prompts (input) and clean test contexts (context).
    prompts = [r.text for r in test if r.label == 0]
    for size in (1024, 8192):
        result["latency"][f"{size // 1024}KB"] = {
            "input": latency(det, sized_texts(prompts, size, texts_per_cell, "input"), input_stage),
            "context": latency(det, sized_texts(ctx_texts, size, texts_per_cell, "context"), context_stage),
        }
    return result


def print_mode(mode: str, r: dict[str, Any]) -> None:
    """One mode's table."""
    print(f"\n== {mode}: artifact {r['version']}  thresholds {r['thresholds']}  benign pool n={r['benign_pool_size']}"
          f" (FPR at the operating point {r['benign_pool_fpr']:.3f})")  # fmt: skip
    print(f"{'held-out set':<24}{'n+':>6}{'R@1%FPR':>9}{'R@0.1%':>8}{'P@op':>8}{'R@op':>8}{'F1@op':>8}{'FPR@op':>8}")
    rows = [(n, e) for n, e in r["prompt_sets"].items()] + [(f"bipia-{p}", e) for p, e in r["bipia"].items()]
    for name, e in rows:
        a = e["at_operating_point"]
        fpr = r["benign_pool_fpr"] if not name.startswith("bipia") else a["fpr"]
        print(
            f"{name:<24}{e['n_pos']:>6}{e['stage1_recall_at_1pct_fpr']:>9.3f}{e['stage1_recall_at_0.1pct_fpr']:>8.3f}"
            f"{a['precision']:>8.3f}{a['recall']:>8.3f}{a['f1']:>8.3f}{fpr:>8.3f}"
        )
    print("(R@1%FPR / R@0.1% are stage-1 curves; @op = the detector's decisions at its shipped thresholds)")
    for name, e in r["prompt_sets"].items():
        if "every_text_embedded_recall_at_1pct_fpr" in e:
            print(f"{name}: stage 1 + MiniLM on every text: R@1%FPR {e['every_text_embedded_recall_at_1pct_fpr']:.3f}"
                  f"  R@0.1% {e['every_text_embedded_recall_at_0.1pct_fpr']:.3f}")  # fmt: skip
        if "recall_by_method" in e:
            print(f"{name} recall at the operating point by method: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in e["recall_by_method"].items()))  # fmt: skip
    print(f"{'benign held-out set':<24}{'n':>6}{'FPR@in':>9}{'FPR@ctx':>9}{'acc@in':>9}")
    for name, e in r["benign_sets"].items():
        print(f"{name:<24}{e['n']:>6}{e['fpr_input']:>9.3f}{e['fpr_context']:>9.3f}"
              f"{e['over_defence_accuracy_input']:>9.3f}")  # fmt: skip
    print("red team (flagged / missed techniques): " + "; ".join(
        f"{k} {v['flagged']:.2f} {v['missed_techniques'] or ''}" for k, v in r["redteam"].items()))  # fmt: skip
    print(f"{'latency ms':<12}{'stage':<9}{'p50':>7}{'p95':>7}{'p99':>7}{'best p50/p95':>14}{'embedded':>10}"
          f"{'emb p50/p95':>14}")  # fmt: skip
    for size, e in r["latency"].items():
        for stage, t in e.items():
            emb = f"{t['embedded_p50_ms']:.1f}/{t['embedded_p95_ms']:.1f}" if "embedded_p50_ms" in t else "-"
            best = f"{t['best_of_runs_p50_ms']:.2f}/{t['best_of_runs_p95_ms']:.2f}"
            print(f"{size:<12}{stage:<9}{t['p50_ms']:>7.2f}{t['p95_ms']:>7.2f}{t['p99_ms']:>7.2f}{best:>14}"
                  f"{t['embedded_share']:>10.3f}{emb:>14}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "guard_injection.json")
    parser.add_argument("--texts", type=int, default=200, help="distinct texts per latency cell")
    args = parser.parse_args()
    # Before numpy is imported: one BLAS thread, as on the one-core goal (and so timings are not a 2-core race).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    from gengate.embed.minilm import available
    from gengate.guard.base import Stage
    from gengate.guard.detectors.injection import InjectionDetector, Model

    tm = load_training_module()
    corpus = tm.load_corpus(args.data)
    model = Model.packaged()
    modes: dict[str, Any] = {"stage1": InjectionDetector(model)}
    if model.has_embedding_head and available():
        from gengate.embed.minilm import MiniLMEncoder

        modes["cascade"] = InjectionDetector(model, encoder=MiniLMEncoder())
    else:
        print("MiniLM package not installed (or no embedding head): cascade mode skipped", file=sys.stderr)
    results = {mode: evaluate(det, tm, corpus, Stage, args.texts) for mode, det in modes.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # The default configuration (embeddings: auto) is the cascade when the encoder is installed.
    default = "cascade" if "cascade" in results else "stage1"
    payload = {"default_mode": default, "modes": results, **results[default]}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    for mode, r in results.items():
        print_mode(mode, r)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
