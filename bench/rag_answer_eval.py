"""Answer quality of an offline RAG app on docugami-sec10q: 20 SEC 10-Q PDFs, 195 reviewed questions.

Ingests the PDFs through the real knowledge-base path (extraction, structure chunking, MiniLM vectors, injection
scan) into a cached SQLite store, then for every question retrieves as a caller who may read everything and
answers with the offline extractive answerer, as `app/<name>` with `model: offline` does. Gold relevance is
document level (globs such as `*2023 Q3 NVDA*`), so it reports document-level retrieval hit@k and MRR, the share
of answers whose citations include a gold document, citation precision, the share of questions answered at all,
and how many of the gold answer's figures appear in the extractive answer — by question type.

    python bench/rag_answer_eval.py [--limit N] [--reingest] [--k 5]

Prints a table and writes bench/results/rag_answer_eval.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import fnmatch
import json
import os
import re
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from gengate.rag.answer import ExtractiveAnswerer, Passage
from gengate.rag.kb import KnowledgeBases
from gengate.rag.sources import scan_source
from gengate.rag.types import AccessList, access_tokens
from gengate.settings import RagSettings
from gengate.store.db import open_store
from gengate.store.knowledge import KnowledgeStore

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "docugami-sec10q"
CACHE = ROOT / "bench" / ".cache" / "docugami"
RESULTS = ROOT / "bench" / "results" / "rag_answer_eval.json"
KB = "sec10q"
FIGURE = re.compile(r"\$?\d[\d,]*(?:\.\d+)?")


def progress(label: str) -> Any:
    started = time.perf_counter()

    def show(done: int, total: int, item: str) -> None:
        rate = done / max(time.perf_counter() - started, 1e-9)
        print(f"\r{label} {done}/{total} ({rate:.2f}/s) {item[:40]:<40}", end="", file=sys.stderr, flush=True)
        if done == total:
            print(file=sys.stderr)

    return show


def figures(text: str) -> set[str]:
    """Numbers with at least three digits (amounts, years), normalised."""
    out = set()
    for m in FIGURE.findall(text):
        digits = m.replace("$", "").replace(",", "")
        if sum(c.isdigit() for c in digits) >= 3:
            out.add(digits.rstrip("0").rstrip(".") if "." in digits else digits)
    return out


def pct(xs: list[float]) -> str:
    return f"{100 * statistics.fmean(xs):5.1f}" if xs else "    -"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument("--reingest", action="store_true", help="rebuild the cached knowledge base")
    parser.add_argument("--k", type=int, default=5, help="passages retrieved per question")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"dataset not found: {DATA.relative_to(ROOT.parent)}")
    CACHE.mkdir(parents=True, exist_ok=True)
    db = CACHE / "gengate.db"
    if args.reingest and db.exists():
        db.unlink()
    store = await open_store(f"sqlite+aiosqlite:///{db}")
    kbs = KnowledgeBases(KnowledgeStore(store.engine), RagSettings())
    ingest: dict[str, Any] = {}
    try:
        if await kbs.store.get(KB) is None:
            await kbs.create(KB, default_access=AccessList(groups=("all",)))
            started = time.perf_counter()
            record = await kbs.store.require(KB)
            scan = await asyncio.to_thread(
                scan_source, DATA / "docs", default_access=kbs.default_access(record), progress=progress("extract")
            )
            extracted = time.perf_counter() - started
            report = await kbs.ingest(KB, scan, source="docs", progress=progress("index  "))
            total = time.perf_counter() - started
            ingest = {
                "documents": len(scan.documents), "problems": len(scan.problems), "chunks": report.chunks,
                "extract_s": round(extracted, 1), "index_s": round(total - extracted, 1), "total_s": round(total, 1),
                "docs_per_s": round(len(scan.documents) / total, 3), "chunks_per_s": round(report.chunks / total, 2),
                "suspicious": report.suspicious,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }  # fmt: skip
            (CACHE / "ingest.json").write_text(json.dumps(ingest))
        elif (CACHE / "ingest.json").exists():
            ingest = json.loads((CACHE / "ingest.json").read_text()) | {"cached": True}

        with (DATA / "qna_data.csv").open(encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))[: args.limit]
        answerer = ExtractiveAnswerer(kbs.embedder if kbs.embedder.enabled else None)
        allowed = access_tokens(groups=["all"])
        per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        search_ms: list[float] = []
        answer_ms: list[float] = []
        show = progress("questions")
        for i, row in enumerate(rows):
            gold = [g.strip() for g in row["Source Docs"].split(",") if g.strip()]

            def relevant(doc: str, gold: list[str] = gold) -> bool:
                return any(fnmatch.fnmatch(doc, g) for g in gold)

            t0 = time.perf_counter()
            hits = await kbs.search([KB], row["Question"], allowed, k=args.k)
            t1 = time.perf_counter()
            passages = [Passage(ref=j + 1, text=h.chunk.context or h.chunk.text, title=h.chunk.title, score=h.score)
                        for j, h in enumerate(hits)]  # fmt: skip
            answer = answerer.answer(row["Question"], passages)
            t2 = time.perf_counter()
            search_ms.append((t1 - t0) * 1000)
            answer_ms.append((t2 - t1) * 1000)
            docs = [h.chunk.doc_id for h in hits]
            first = next((r for r, d in enumerate(docs) if relevant(d)), None)
            cited = [docs[r - 1] for r in answer.refs] if answer else []
            gold_figures = figures(row["Answer"])
            m = {
                "hit@k": float(first is not None),
                "mrr@k": 1.0 / (first + 1) if first is not None else 0.0,
                "answered": float(answer is not None),
                "citation_hit": float(any(relevant(d) for d in cited)),
                "figure_recall": len(gold_figures & figures(answer.text)) / len(gold_figures)
                if answer and gold_figures else 0.0,
            }  # fmt: skip
            if cited:
                m["citation_precision"] = sum(relevant(d) for d in cited) / len(cited)
            for group in ("all", row["Question Type"], f"chunk:{row['Source Chunk Type']}"):
                for key, value in m.items():
                    per[group][key].append(value)
            show(i + 1, len(rows), row["Question"])
    finally:
        await store.close()

    columns = ["hit@k", "mrr@k", "answered", "citation_hit", "citation_precision", "figure_recall"]
    print(f"\ndocugami-sec10q, offline extractive app, k={args.k} (percent; hit/MRR/citations at document level)")
    print(f"{'group':<28} {'n':>4} " + " ".join(f"{c:>18}" for c in columns))
    for group in sorted(per, key=lambda g: (g != "all", g)):
        n = len(per[group]["hit@k"])
        print(f"{group:<28} {n:>4} " + " ".join(f"{pct(per[group].get(c, [])):>18}" for c in columns))
    s = sorted(search_ms)
    a = sorted(answer_ms)
    latency = {
        "search_p50_ms": round(s[len(s) // 2], 1), "search_p95_ms": round(s[int(len(s) * 0.95) - 1], 1),
        "answer_p50_ms": round(a[len(a) // 2], 1), "answer_p95_ms": round(a[int(len(a) * 0.95) - 1], 1),
    }  # fmt: skip
    print("latency:", latency)
    if ingest:
        print("ingestion:", ingest)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    summary = {g: {c: statistics.fmean(v) for c, v in per[g].items() if v} | {"n": len(per[g]["hit@k"])} for g in per}
    RESULTS.write_text(json.dumps({"k": args.k, "groups": summary, "latency": latency, "ingest": ingest}, indent=2))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
