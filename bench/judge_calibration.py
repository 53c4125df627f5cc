"""Judge calibration bench: the offline grounding metrics against human ratings on mtrag-human-evals.

Data: the IBM MTRAG human-evaluation subset (../shared/datasets/mtrag-human-evals): 477 responses (159 multi-turn
RAG tasks × the human reference, Llama-3.1-405B and GPT-4o), each with the passages shown to the model and 2–3
human ratings (1–4) of faithfulness, appropriateness and completeness, plus the file's own automatic scores
(`rl_f` = RAGAS faithfulness, `rb_llm` = a RAD-Bench-style LLM judge). The question is the conversation's last
user turn, the context the task's passages, the human score the mean over annotators.

Split: by conversation (the task id before "<::>"); a conversation is held out when crc32(id) % 5 == 0, which
holds out 4 of the 20 conversations (96 responses) and trains on 381. Every design choice of `faithfulness` (the
ablation table) was made on the train split; the held-out table is the report. Flag thresholds for kappa and
precision/recall are chosen on train (best F1 at flagging a human mean below 3, "unfaithful", as the dataset's
README does) and applied unchanged on held-out. RAGAS is scored on the same held-out rows.

    python bench/judge_calibration.py [--no-encoder] [--resamples 1000]

With the MiniLM encoder the first step embeds ~4k sentences (a few minutes on 2 busy cores; progress on stderr).
Writes bench/results/judge_calibration.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gengate.embed.minilm import available
from gengate.eval.calibrate import best_threshold, calibrate, spearman_difference
from gengate.eval.metrics import EvalCase, Metric, Observation
from gengate.eval.metrics.grounding import AnswerRelevance, Faithfulness

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mtrag-human-evals"
RESULTS = ROOT / "bench" / "results" / "judge_calibration.json"
HUMAN_FLAG = 3.0  # a human mean below this is "unfaithful" (20 % of responses), as in the dataset's README
FILLS = (1.0, 0.5, 0.0)  # candidate values for the rows faithfulness skips, in the all-rows comparison
RAGAS_ALL_ROWS = 0.58  # the README's Spearman of rl_f with the human faithfulness mean over all 477 responses


@dataclass(frozen=True)
class Row:
    """One rated response."""

    conversation: str
    model: str
    question: str
    answer: str
    passages: tuple[str, ...]
    human: dict[str, float]  # faithfulness, appropriateness, completeness: mean over annotators
    auto: dict[str, float]  # rl_f, rb_llm, rb_agg as shipped
    heldout: bool


def load_rows(folder: Path) -> list[Row]:
    """Every rated response with its passages, the mean human ratings and the file's automatic scores."""
    data = json.loads((folder / "reference_subset_with_human_evaluations.json").read_text(encoding="utf-8"))
    docs = {d["document_id"]: d["text"] for d in data["documents"]}
    tasks = {t["task_id"]: t for t in data["tasks"]}
    rows = []
    for e in data["evaluations"]:
        task = tasks[e["task_id"]]
        conversation = e["task_id"].split("<::>")[0]
        notes = e["annotations"]
        human = {}
        for key in ("faithfulness", "appropriateness", "completeness"):
            ratings = [float(a["value"]) for a in notes[key].values()]
            human[key] = sum(ratings) / len(ratings)
        auto = {key: float(next(iter(notes[key].values()))["value"]) for key in ("rl_f", "rb_llm", "rb_agg")}
        rows.append(
            Row(
                conversation=conversation,
                model=e["model_id"],
                question=[turn["text"] for turn in task["input"] if turn["speaker"] == "user"][-1],
                answer=e["model_response"],
                passages=tuple(docs[c["document_id"]] for c in task["contexts"]),
                human=human,
                auto=auto,
                heldout=zlib.crc32(conversation.encode()) % 5 == 0,
            )
        )
    return rows


class CachingEncoder:
    """MiniLM behind an in-memory cache, so the variants embed every sentence once; counts what it embedded."""

    def __init__(self) -> None:
        from gengate.embed.minilm import MiniLMEncoder

        self._encoder = MiniLMEncoder()
        self._cache: dict[str, np.ndarray] = {}
        self.embedded = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings, from the cache where possible."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            self._cache.update(zip(missing, self._encoder.encode(missing), strict=True))
            self.embedded += len(missing)
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])


def metric_values(metric: Metric, rows: Sequence[Row], progress: str = "") -> list[float | None]:
    """The metric's value on every row (None where it does not apply), with progress on stderr when labelled."""
    out = []
    started = time.perf_counter()
    for i, row in enumerate(rows, 1):
        obs = Observation(answer=row.answer, retrieved_texts=row.passages)
        out.append(metric.score(EvalCase(case_id="", question=row.question), obs).value)
        if progress and (i % 20 == 0 or i == len(rows)):
            elapsed = time.perf_counter() - started
            print(f"\r  {progress}: {i}/{len(rows)} rows, {elapsed:.0f} s", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return out


def spearman_on(values: Sequence[float | None], rows: Sequence[Row], key: str, resamples: int) -> dict[str, Any]:
    """Spearman (with bootstrap CI) of the applicable values against a human rating."""
    report = calibrate(values, [r.human[key] for r in rows], resamples=resamples)
    return {"n": report.n, "spearman": report.spearman, "ci": list(report.spearman_ci)}


def threshold_on_train(values: Sequence[float | None], rows: Sequence[Row], key: str) -> float:
    """The metric threshold whose flags best find the train rows people rated below HUMAN_FLAG (best F1)."""
    pairs = [(v, r.human[key] < HUMAN_FLAG) for v, r in zip(values, rows, strict=True) if v is not None]
    return best_threshold([p[0] for p in pairs], [p[1] for p in pairs])


# --- the table ----------------------------------------------------------------------------------------------------

Scorer = Callable[[Sequence[Row]], list[float | None]]


def _auto(key: str) -> Scorer:
    return lambda rows: [r.auto[key] for r in rows]


def _metric(metric: Metric) -> Scorer:
    return lambda rows: metric_values(metric, rows)


def _filled(scorer: Scorer, fill: float) -> Scorer:
    # Scoring the rows the metric skips (refusals, pure pleasantries) puts every row on the table, as RAGAS does.
    return lambda rows: [fill if v is None else v for v in scorer(rows)]


def _same_rows_as(reference: Scorer, auto_key: str) -> Scorer:
    def score(rows: Sequence[Row]) -> list[float | None]:
        mask = reference(rows)
        return [r.auto[auto_key] if m is not None else None for r, m in zip(rows, mask, strict=True)]

    return score


def report_row(
    label: str, scorer: Scorer, key: str, train: list[Row], test: list[Row], resamples: int
) -> dict[str, Any]:
    """One line of the held-out table: threshold from train, every figure from held-out."""
    threshold = threshold_on_train(scorer(train), train, key)
    values = scorer(test)
    report = calibrate(
        values,
        [r.human[key] for r in test],
        threshold=threshold,
        human_threshold=HUMAN_FLAG,
        resamples=resamples,
    )
    return {
        "metric": label,
        "human": key,
        "n": report.n,
        "skipped": report.skipped,
        "spearman": report.spearman,
        "ci": list(report.spearman_ci),
        "threshold": threshold,
        "flagged_by_humans": report.flagged_by_humans,
        "kappa": report.kappa,
        "precision": report.precision,
        "recall": report.recall,
        "f1": report.f1,
    }


def print_table(title: str, lines: Sequence[dict[str, Any]]) -> None:
    """The held-out table as aligned text."""
    print(f"\n{title}")
    header = ("metric", "human", "n", "skip", "Spearman [95% CI]", "thr", "flag", "kappa", "P", "R", "F1")
    layout = "{:32} {:15} {:>4} {:>4}  {:22} {:>5} {:>4} {:>6} {:>5} {:>5} {:>5}"
    print(layout.format(*header))
    for line in lines:
        ci = f"{line['spearman']:.3f} [{line['ci'][0]:.2f}, {line['ci'][1]:.2f}]"
        figures = [f"{line[k]:.2f}" for k in ("threshold", "kappa", "precision", "recall", "f1")]
        cells = [line["metric"], line["human"], line["n"], line["skipped"], ci, figures[0], line["flagged_by_humans"]]
        print(layout.format(*cells, *figures[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-encoder", action="store_true", help="lexical metrics only (skips MiniLM)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the Spearman CI")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"dataset not found: {DATA}")
    started = time.perf_counter()
    rows = load_rows(DATA)
    train = [r for r in rows if not r.heldout]
    test = [r for r in rows if r.heldout]
    n_conv = len({r.conversation for r in rows})
    n_test_conv = len({r.conversation for r in test})
    print(f"mtrag-human-evals: {len(rows)} responses, {n_conv} conversations; train {len(train)} responses, "
          f"held-out {len(test)} responses ({n_test_conv} conversations)", file=sys.stderr)  # fmt: skip

    encoder: CachingEncoder | None = None
    if not args.no_encoder and available():
        encoder = CachingEncoder()
        # The first pass embeds claims and candidate passage units (cached for every later variant).
        metric_values(Faithfulness(encoder=encoder), rows, "embedding with all-MiniLM-L6-v2 (faithfulness)")
        metric_values(AnswerRelevance(encoder=encoder), rows, "embedding with all-MiniLM-L6-v2 (answer relevance)")
        print(f"  {encoder.embedded} sentences embedded", file=sys.stderr)
    elif not args.no_encoder:
        print("MiniLM is not installed (make models): lexical metrics only", file=sys.stderr)

    # --- ablations: every faithfulness variant tried, Spearman with the human faithfulness mean -------------------
    variants: list[tuple[str, dict[str, Any]]] = [
        ("default (weighted mean, window 1)", {}),
        ("aggregate=mean (claims alike)", {"aggregate": "mean"}),
        ("aggregate=share (support >= 0.5)", {"aggregate": "share"}),
        ("aggregate=min", {"aggregate": "min"}),
        ("window=0 (single sentence)", {"window": 0}),
        ("window=2", {"window": 2}),
        ("window=-1 (whole passage)", {"window": -1}),
        ("numbers not special", {"number_weight": 1.0, "missing_number_cap": 1.0}),
        ("missing_number_cap=0", {"missing_number_cap": 0.0}),
    ]
    if encoder is not None:
        variants += [
            ("minilm default (lexical_weight 0.5)", {"encoder": encoder}),
            ("minilm cosine only (lexical_weight 0)", {"encoder": encoder, "lexical_weight": 0.0}),
            ("minilm lexical_weight 0.25", {"encoder": encoder, "lexical_weight": 0.25}),
            ("minilm lexical_weight 0.75", {"encoder": encoder, "lexical_weight": 0.75}),
            ("minilm cosine map [0, 1]", {"encoder": encoder, "cosine_floor": 0.0, "cosine_ceiling": 1.0}),
            ("minilm aggregate=mean", {"encoder": encoder, "aggregate": "mean"}),
        ]
    ablations = []
    print("\nAblations: faithfulness variants, Spearman with the human faithfulness mean (choices made on train)")
    print(f"{'variant':40} {'train':>7} {'held-out':>9}")
    for label, options in variants:
        metric = Faithfulness(**options)
        tr = spearman_on(metric_values(metric, train), train, "faithfulness", 1)
        te = spearman_on(metric_values(metric, test), test, "faithfulness", 1)
        ablations.append({"variant": label, "train": tr["spearman"], "heldout": te["spearman"], "n_train": tr["n"]})
        print(f"{label:40} {tr['spearman']:>7.3f} {te['spearman']:>9.3f}")
        print(f"  … {label}", file=sys.stderr)
    ragas_train = spearman_on(_same_rows_as(_metric(Faithfulness()), "rl_f")(train), train, "faithfulness", 1)
    print(f"{'RAGAS rl_f (same train rows)':40} {ragas_train['spearman']:>7.3f}")

    # --- the held-out report --------------------------------------------------------------------------------------
    # The headline variant is the one with the better train Spearman (minilm when it is installed).
    lexical: Scorer = _metric(Faithfulness())
    scorers: list[tuple[str, Scorer, str]] = [("faithfulness (lexical)", lexical, "faithfulness")]
    best, best_label = lexical, "faithfulness (lexical)"
    if encoder is not None:
        minilm = _metric(Faithfulness(encoder=encoder))
        scorers.append(("faithfulness (minilm)", minilm, "faithfulness"))
        if (
            spearman_on(minilm(train), train, "faithfulness", 1)["spearman"]
            > spearman_on(lexical(train), train, "faithfulness", 1)["spearman"]
        ):
            best, best_label = minilm, "faithfulness (minilm)"
    # For a comparison on every row, skipped rows get the value (of 1, 0.5, 0) that does best on train.
    fills = {fill: spearman_on(_filled(best, fill)(train), train, "faithfulness", 1)["spearman"] for fill in FILLS}
    fill = max(fills, key=lambda f: fills[f])
    print(f"\n{best_label}, skipped rows scored as … (train Spearman): "
          + ", ".join(f"{f:g} → {v:.3f}" for f, v in fills.items()))  # fmt: skip
    scorers += [
        (f"{best_label.replace('faithfulness', 'faith.')}, n/a={fill:g}", _filled(best, fill), "faithfulness"),
        ("RAGAS rl_f (same rows)", _same_rows_as(best, "rl_f"), "faithfulness"),
        ("RAGAS rl_f (all held-out rows)", _auto("rl_f"), "faithfulness"),
        ("rb_llm LLM judge (same rows)", _same_rows_as(best, "rb_llm"), "faithfulness"),
        ("answer_relevance (lexical)", _metric(AnswerRelevance()), "appropriateness"),
    ]
    if encoder is not None:
        relevance = _metric(AnswerRelevance(encoder=encoder))
        scorers += [
            ("answer_relevance (minilm)", relevance, "appropriateness"),
            ("answer_relevance (minilm)", relevance, "completeness"),
        ]
    scorers += [
        ("RAGAS rl_f (all held-out rows)", _auto("rl_f"), "appropriateness"),
        ("RAGAS rl_f (all held-out rows)", _auto("rl_f"), "completeness"),
    ]
    heldout = [report_row(label, s, key, train, test, args.resamples) for label, s, key in scorers]
    print_table(
        f"Held-out split: {len(test)} responses, {n_test_conv} conversations; thresholds chosen on train; "
        f"flag = human mean below {HUMAN_FLAG:g} (flag: how many rows people flagged)",
        heldout,
    )

    everything = [(label, s) for label, s, key in scorers if label.startswith("faithfulness")]
    everything.append(("RAGAS rl_f", _auto("rl_f")))
    all_rows = {label: spearman_on(s(rows), rows, "faithfulness", args.resamples) for label, s in everything}
    print("\nAll 477 rows (train rows included, so not an unbiased estimate for ours):")
    for label, figures in all_rows.items():
        print(f"  {label:34} n={figures['n']:>3}  Spearman {figures['spearman']:.3f}")
    print(f"  (the dataset README: RAGAS rl_f over all rows {RAGAS_ALL_ROWS})")

    applicable = [(v, r) for v, r in zip(best(test), test, strict=True) if v is not None]
    diff, (diff_low, diff_high) = spearman_difference(
        [v for v, _ in applicable],
        [r.auto["rl_f"] for _, r in applicable],
        [r.human["faithfulness"] for _, r in applicable],
        resamples=args.resamples,
    )
    print(f"\n{best_label} − RAGAS rl_f on the same held-out rows (paired bootstrap): "
          f"{diff:+.3f} [{diff_low:+.2f}, {diff_high:+.2f}]")  # fmt: skip
    ours = next(line for line in heldout if line["metric"] == best_label)
    ragas = next(line for line in heldout if line["metric"] == "RAGAS rl_f (same rows)")
    verdict = (
        "beats" if ours["ci"][0] > RAGAS_ALL_ROWS else "is above" if ours["spearman"] > RAGAS_ALL_ROWS else "is below"
    )
    print(f"\n{best_label} (chosen on train) on held-out: Spearman {ours['spearman']:.3f} "
          f"[{ours['ci'][0]:.2f}, {ours['ci'][1]:.2f}] {verdict} the README's {RAGAS_ALL_ROWS} for RAGAS "
          f"(CI {'excludes' if ours['ci'][0] > RAGAS_ALL_ROWS else 'includes'} it); RAGAS on the same held-out rows: "
          f"{ragas['spearman']:.3f}")  # fmt: skip

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "dataset": "mtrag-human-evals",
                "split": {
                    "rule": "held out when crc32(conversation id) % 5 == 0",
                    "train_responses": len(train),
                    "heldout_responses": len(test),
                    "heldout_conversations": n_test_conv,
                },
                "human_flag": f"mean rating < {HUMAN_FLAG:g}",
                "encoder": "all-MiniLM-L6-v2" if encoder is not None else None,
                "ablations": ablations,
                "ragas_train_same_rows": ragas_train["spearman"],
                "headline": best_label,
                "skipped_rows_fill_train": {str(k): v for k, v in fills.items()},
                "heldout": heldout,
                "heldout_minus_ragas_same_rows": {"difference": diff, "ci": [diff_low, diff_high]},
                "all_rows": all_rows,
                "readme_ragas_all_rows": RAGAS_ALL_ROWS,
                "seconds": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"\nwrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
