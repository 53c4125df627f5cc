"""Throughput of `gengate eval run`: 1,000 cases × 3 trials against an offline app with retrieval.

Builds a knowledge base from SciFact abstracts (every document with a judged claim, plus others up to
`--docs`), turns 1,000 SciFact claims into cases with their gold documents, and runs them through the real app
path in-process (guard-free app, permission-aware retrieval, the extractive answerer) with deterministic and
retrieval metrics. Prints wall time, trials per second and peak memory, and writes
bench/results/eval_throughput.json.

    python bench/eval_throughput.py [--cases 1000] [--trials 3] [--dense] [--encoder-answers]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from gengate.eval.datasets import Case, Identity
from gengate.eval.results import summarise
from gengate.eval.runner import Experiment, Journal
from gengate.rag.kb import KnowledgeBases
from gengate.rag.sources import scan_source
from gengate.rag.types import AccessList
from gengate.settings import load_settings
from gengate.store.db import open_store
from gengate.store.knowledge import KnowledgeStore

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "scifact"
RESULTS = ROOT / "bench" / "results" / "eval_throughput.json"


def load(n_cases: int, n_docs: int) -> tuple[dict[str, dict[str, str]], list[Case]]:
    corpus = {}
    with (DATA / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            corpus[d["_id"]] = d
    queries = {}
    with (DATA / "queries.jsonl").open(encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            queries[q["_id"]] = q["text"]
    gold: dict[str, list[str]] = {}
    for split in ("train", "test"):
        for line in (DATA / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]:
            qid, doc, _ = line.split("\t")
            gold.setdefault(qid, []).append(doc)
    qids = sorted(gold, key=int)[:n_cases]
    wanted = {d for q in qids for d in gold[q]}
    docs = {d: corpus[d] for d in wanted if d in corpus}
    for d in corpus:
        if len(docs) >= max(n_docs, len(wanted)):
            break
        docs.setdefault(d, corpus[d])
    who = Identity(subject="bench", team="bench", groups=("all",))
    cases = [Case(case_id=q, question=queries[q], gold_ids=tuple(f"{d}.md" for d in gold[q]), identity=who)
             for q in qids]  # fmt: skip
    return docs, cases


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--docs", type=int, default=2000, help="knowledge-base size (documents)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--dense", action="store_true", help="MiniLM vectors in the KB (ingestion takes minutes)")
    parser.add_argument("--encoder-answers", action="store_true", help="the answerer's MiniLM relevance check")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit("the SciFact dataset is missing (shared/datasets/scifact)")
    docs, cases = load(args.cases, args.docs)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "docs"
        folder.mkdir()
        for doc_id, d in docs.items():
            (folder / f"{doc_id}.md").write_text(f"# {d['title']}\n\n{d['text']}\n", encoding="utf-8")
        config = Path(tmp) / "gengate.yaml"
        config.write_text(json.dumps({
            "storage": {"data_dir": str(Path(tmp) / "data")}, "telemetry": {"log_level": "WARNING"},
            "rag": {"embeddings": "minilm" if args.dense else "none"},
            "apps": {"bench": {"knowledge_bases": ["scifact"], "top_k": 5,
                               "extractive_encoder": args.encoder_answers}},
        }))  # fmt: skip
        settings = load_settings(config, environ={})
        store = await open_store(settings.database_url)
        started = time.perf_counter()
        kbs = KnowledgeBases(KnowledgeStore(store.engine), settings.rag)
        everyone = AccessList(groups=("all",))
        await kbs.create("scifact", default_access=everyone)
        report = await kbs.ingest("scifact", scan_source(folder, default_access=everyone), source="docs")
        if report.problems or not report.chunks:
            sys.exit(f"ingestion failed: {report.problems[:3]}")
        ingest_s = time.perf_counter() - started
        await store.close()
        print(f"ingested {len(docs)} documents ({report.chunks} chunks) in {ingest_s:.1f} s", file=sys.stderr)

        experiment = Experiment(
            settings, "bench", "scifact-claims", 1, cases, trials=args.trials, concurrency=args.concurrency,
            metrics=["contains", "refusal", "recall@5", "mrr@10", "ndcg@10", "latency"],
        )  # fmt: skip
        done = [0]

        def progress(n: int, total: int) -> None:
            if n == total or n - done[0] >= 300:
                done[0] = n
                print(f"trials {n}/{total}", file=sys.stderr)

        started = time.perf_counter()
        run = await experiment.run(Journal(Path(tmp) / "run.jsonl"), run_id="bench", progress=progress)
        wall = time.perf_counter() - started
    summary = summarise(run)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trials = len(run.trials)
    out = {
        "cases": len(cases), "trials_per_case": args.trials, "trials": trials, "kb_documents": len(docs),
        "dense": args.dense, "encoder_answers": args.encoder_answers, "wall_s": round(wall, 1),
        "trials_per_s": round(trials / wall, 1), "ingest_s": round(ingest_s, 1), "peak_rss_mb": round(rss, 1),
        "metrics": {n: None if m.value is None else round(m.value, 4) for n, m in summary.metrics.items()},
    }  # fmt: skip
    print(f"\n{'cases':>6} {'trials':>7} {'wall s':>8} {'trials/s':>9} {'peak RSS MB':>12}  goal: < 60 s")
    print(f"{len(cases):>6} {trials:>7} {wall:>8.1f} {trials / wall:>9.1f} {rss:>12.1f}  "
          f"{'PASS' if wall < 60 else 'FAIL'}")  # fmt: skip
    print("metrics:", out["metrics"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
