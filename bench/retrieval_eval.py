"""Retrieval bench: quality on SciFact and speed of the permission-aware hybrid index at SciFact size and at 100k.

Quality: every SciFact document is one row (title in the title field, abstract as text; access `group:all`),
with an all-MiniLM-L6-v2 vector of "title abstract" and, as part vectors, one per title and abstract sentence.
nDCG@10, recall@100 and MRR@10 on the 300 test queries for lexical, dense, the hybrid with default settings (the
configuration chosen on the 809 train queries) and the issue's starting line (BM25 defaults, min-max 0.5/0.5).
The ablation table lists every configuration tried, with train and test nDCG@10: choices were made on train only.

Speed (one BLAS thread): index build time, MiniLM throughput on a sample of documents, search latency p50/p95
(query vectors precomputed) at SciFact size and on synthetic chunks: random text drawn from SciFact's word
frequencies, random unit vectors, 1–2 of 16 access groups per row; the caller holds 8 groups (~60 % readable).
Peak RSS is the whole bench process's.

    python bench/retrieval_eval.py [--queries N] [--no-dense] [--no-ablations] [--synthetic 100000]

Embeddings are cached in bench/.cache (keyed by a hash of the texts): the first run encodes the corpus
(~50k texts, about an hour on 2 cores), later runs take a few minutes. Writes bench/results/retrieval_eval.json.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before NumPy loads BLAS: latency is measured on one thread

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from gengate.rag.chunk import ChunkingSettings, chunk_text  # noqa: E402
from gengate.rag.index import MemoryIndex, PartVectors, RetrievalSettings  # noqa: E402
from gengate.rag.lexical import Analyzer, Bm25Settings  # noqa: E402
from gengate.rag.types import IndexRow  # noqa: E402
from ir_metrics import mean_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results" / "retrieval_eval.json"
DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "scifact"
ALL = frozenset({"group:all"})
Qrels = dict[str, dict[str, int]]

# The starting line: BM25 with textbook parameters on the text only, min-max linear fusion 0.5 / 0.5.
BASELINE = RetrievalSettings(
    lexical=Bm25Settings(title_weight=0.0, stem="none"), normalise="minmax", lexical_weight=0.5, dense_weight=0.5,
    part_weight=0.0, candidates=100,
)  # fmt: skip
_LEX = RetrievalSettings(mode="lexical")
_HYB = RetrievalSettings(part_weight=0.0, dense_weight=0.5, candidates=100)  # two-signal z-score fusion
# Every configuration tried, in the order tried; the defaults of RetrievalSettings are the one chosen on train.
ABLATIONS: list[tuple[str, RetrievalSettings]] = [
    ("lexical: BM25 k1=1.2 b=0.75, text only, no stemming", _LEX.model_copy(update={"lexical": BASELINE.lexical})),
    ("lexical: + light stemming", _LEX.model_copy(update={"lexical": Bm25Settings(title_weight=0.0)})),
    ("lexical: + title field, BM25F weight 1, title b 0.5",
     _LEX.model_copy(update={"lexical": Bm25Settings(title_weight=1.0, title_b=0.5)})),
    ("lexical: title as a weighted sum of two BM25 (0.5)",
     _LEX.model_copy(update={"lexical": Bm25Settings(combine="sum", title_weight=0.5, title_b=0.5)})),
    ("lexical: BM25F title weight 2, title b 1 (chosen)", _LEX),
    ("lexical: + RM3 (5 docs, 20 terms, 0.85 original)",
     _LEX.model_copy(update={"prf_docs": 5, "prf_terms": 20, "prf_query_weight": 0.85})),
    ("dense: MiniLM on title + abstract", RetrievalSettings(mode="dense")),
    ("hybrid: issue baseline (BM25 text only, min-max 0.5/0.5)", BASELINE),
    ("hybrid: BM25F + dense, RRF k=60", _HYB.model_copy(update={"fusion": "rrf"})),
    ("hybrid: BM25F + dense, min-max 0.5/0.5", _HYB.model_copy(update={"normalise": "minmax"})),
    ("hybrid: BM25F + dense, z-score 0.5/0.5", _HYB),
    ("hybrid: z-score + RM3 (5 docs, 20 terms, 0.85)",
     _HYB.model_copy(update={"prf_docs": 5, "prf_terms": 20, "prf_query_weight": 0.85})),
    ("hybrid: z-score + Rocchio on the query vector (5 docs, 0.3)",
     _HYB.model_copy(update={"dense_prf_docs": 5, "dense_prf_weight": 0.3})),
    ("hybrid: + best-sentence vector 0.5 (3 signals)", _HYB.model_copy(update={"part_weight": 0.5})),
    ("hybrid: 3 signals, min-max instead of z-score",
     _HYB.model_copy(update={"part_weight": 0.5, "normalise": "minmax"})),
    ("hybrid: 3 signals, dense weight 0.4", _HYB.model_copy(update={"part_weight": 0.5, "dense_weight": 0.4})),
    ("hybrid: 3 signals, dense 0.4, 200 candidates (chosen)", RetrievalSettings()),
]  # fmt: skip


def log(msg: str) -> None:
    """Progress on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_scifact(data: Path = DATA) -> tuple[list[dict[str, str]], dict[str, str], dict[str, Qrels]]:
    """Corpus rows, query texts by id and the train/test qrels."""
    docs = [json.loads(line) for line in (data / "corpus.jsonl").open(encoding="utf-8")]
    queries = {q["_id"]: q["text"] for q in map(json.loads, (data / "queries.jsonl").open(encoding="utf-8"))}
    qrels: dict[str, Qrels] = {}
    for split in ("train", "test"):
        table: Qrels = {}
        for line in (data / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]:
            qid, did, score = line.split("\t")
            table.setdefault(qid, {})[did] = int(score)
        qrels[split] = table
    return docs, queries, qrels


def cached_embeddings(encoder: Any, texts: Sequence[str], tag: str) -> np.ndarray:
    """MiniLM vectors of `texts`, from bench/.cache when the same texts were encoded before."""
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"minilm-{tag}-{len(texts)}-{digest}.npy"
    if path.exists():
        return np.load(path)
    CACHE.mkdir(parents=True, exist_ok=True)
    out = np.zeros((len(texts), 384), dtype=np.float32)
    start = time.perf_counter()
    for b in range(0, len(texts), 256):
        out[b : b + 256] = encoder().encode(texts[b : b + 256])
        done = min(b + 256, len(texts))
        rate = done / (time.perf_counter() - start)
        log(f"embedding {tag}: {done}/{len(texts)} ({rate:.1f}/s, {(len(texts) - done) / rate:.0f} s left)")
    np.save(path, out)
    return out


def sentence_parts(docs: Sequence[dict[str, str]]) -> tuple[list[int], list[str]]:
    """(row, text) of every part: each document's title and each sentence of its abstract."""
    settings = ChunkingSettings(strategy="sentence_window", window=0)
    rows: list[int] = []
    texts: list[str] = []
    for i, doc in enumerate(docs):
        pieces = ([doc["title"].strip()] if doc["title"].strip() else []) + [
            p.text for p in chunk_text(doc["text"], settings)
        ]
        rows += [i] * len(pieces)
        texts += pieces
    return rows, texts


def evaluate(index: MemoryIndex, docs: Sequence[dict[str, str]], queries: dict[str, str], qrels: Qrels,
             qvec: dict[str, np.ndarray]) -> dict[str, float]:  # fmt: skip
    """Mean metrics of `index` over the queries of `qrels` (top 100 per query)."""
    runs = {}
    for qid in qrels:
        hits = index.search(queries[qid], qvec.get(qid), ALL, k=100)
        runs[qid] = [docs[h.chunk_id]["_id"] for h in hits]
    return mean_metrics(runs, qrels)


def latency(search: Callable[[int], object], n: int) -> dict[str, float]:
    """p50/p95 in ms of `search(i)` for i in range(n), after a short warm-up."""
    for i in range(min(n, 10)):
        search(i)
    times = []
    for i in range(n):
        start = time.perf_counter()
        search(i)
        times.append((time.perf_counter() - start) * 1000)
    p50, p95 = np.percentile(times, [50, 95])
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2)}


def synthetic(n: int, docs: Sequence[dict[str, str]], seed: int = 0) -> tuple[list[IndexRow], np.ndarray]:
    """`n` chunks of 50–250 words drawn from SciFact's word frequencies, random unit vectors, 1–2 of 16 groups."""
    counts = Counter(w for d in docs for w in Analyzer().words(d["text"]))
    words = list(counts)
    p = np.array(list(counts.values()), dtype=np.float64)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(50, 251, n)
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    flat = list(map(words.__getitem__, rng.choice(len(words), int(bounds[-1]), p=p / p.sum()).tolist()))
    groups = rng.integers(0, 16, (n, 2))
    two = rng.random(n) < 0.5
    rows = [
        IndexRow(
            chunk_id=i,
            doc_id=f"syn{i // 8}",
            title=" ".join(flat[bounds[i] : bounds[i] + 4]),
            text=" ".join(flat[bounds[i] : bounds[i + 1]]),
            access=frozenset({f"group:{g}" for g in (groups[i] if two[i] else groups[i, :1])}),
            metadata={"lang": "en" if i % 4 else "de"},
        )
        for i in range(n)
    ]  # fmt: skip
    vectors = rng.standard_normal((n, 384), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return rows, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=0, help="limit each split to the first N queries")
    parser.add_argument("--no-dense", action="store_true", help="skip embeddings (lexical only)")
    parser.add_argument("--no-ablations", action="store_true", help="skip the table of configurations tried")
    parser.add_argument("--synthetic", type=int, default=100_000, help="synthetic chunks for the latency test")
    parser.add_argument("--sample", type=int, default=200, help="documents for the MiniLM throughput figure")
    args = parser.parse_args()

    docs, queries, qrels = load_scifact()
    if args.queries:
        qrels = {s: dict(list(t.items())[: args.queries]) for s, t in qrels.items()}
    rows = [IndexRow(i, d["_id"], d["title"], d["text"], ALL) for i, d in enumerate(docs)]
    out: dict[str, Any] = {"corpus_rows": len(rows), "test_queries": len(qrels["test"]), "quality": {}, "speed": {}}
    speed = out["speed"]

    embeddings = parts = None
    qvec: dict[str, np.ndarray] = {}
    if not args.no_dense:
        from gengate.embed.minilm import MiniLMEncoder  # optional: only the dense part needs it

        encoders: list[MiniLMEncoder] = []

        def encoder() -> MiniLMEncoder:
            if not encoders:
                encoders.append(MiniLMEncoder())
            return encoders[0]

        sample = [f"{d['title']} {d['text']}" for d in random.Random(0).sample(docs, args.sample)]
        log(f"MiniLM throughput on {len(sample)} documents")
        start = time.perf_counter()
        encoder().encode(sample)
        speed["embed_texts_per_s"] = round(len(sample) / (time.perf_counter() - start), 1)
        embeddings = cached_embeddings(encoder, [f"{d['title']} {d['text']}".strip() for d in docs], "docs")
        part_rows, part_texts = sentence_parts(docs)
        parts = PartVectors(np.array(part_rows), cached_embeddings(encoder, part_texts, "parts"))
        q_ids = sorted({q for t in qrels.values() for q in t}, key=int)
        qvec = dict(zip(q_ids, cached_embeddings(encoder, [queries[q] for q in q_ids], "queries"), strict=True))
        start = time.perf_counter()
        encoder().encode([queries[q_ids[0]]])
        speed["embed_one_query_ms"] = round((time.perf_counter() - start) * 1000, 1)

    def build(settings: RetrievalSettings) -> MemoryIndex:
        return MemoryIndex(rows, embeddings, settings=settings, parts=parts)

    log("building the SciFact index")
    start = time.perf_counter()
    index = build(RetrievalSettings())
    speed["scifact_build_s"] = round(time.perf_counter() - start, 2)

    systems = [("lexical", RetrievalSettings(mode="lexical"))]
    if embeddings is not None:
        systems += [("dense", RetrievalSettings(mode="dense")), ("hybrid (default settings)", RetrievalSettings()),
                    ("hybrid (issue baseline)", BASELINE)]  # fmt: skip
    for name, settings in systems:
        log(f"evaluating {name} on test")
        metrics = evaluate(build(settings), docs, queries, qrels["test"], qvec)
        out["quality"][name] = {k: round(v, 4) for k, v in metrics.items()}
    if embeddings is not None:  # what a knowledge base created without --sentence-vectors gets
        log("evaluating hybrid without sentence vectors on test")
        plain = MemoryIndex(rows, embeddings, settings=RetrievalSettings())
        metrics = evaluate(plain, docs, queries, qrels["test"], qvec)
        out["quality"]["hybrid, no sentence vectors"] = {k: round(v, 4) for k, v in metrics.items()}

    test_ids = list(qrels["test"])
    for mode in ["lexical"] + (["dense", "hybrid"] if embeddings is not None else []):
        speed[f"scifact_{mode}"] = latency(
            lambda i, m=mode: index.search(queries[test_ids[i]], qvec.get(test_ids[i]), ALL, mode=m),  # type: ignore[misc]
            len(test_ids),
        )

    if args.synthetic:
        log(f"generating {args.synthetic:,} synthetic chunks")
        syn_rows, syn_vectors = synthetic(args.synthetic, docs)
        log("building the synthetic index")
        start = time.perf_counter()
        syn = MemoryIndex(syn_rows, syn_vectors)
        speed["synthetic_rows"] = args.synthetic
        speed["synthetic_build_s"] = round(time.perf_counter() - start, 2)
        allowed = frozenset(f"group:{g}" for g in range(8))
        readable = sum(1 for r in syn_rows if r.access & allowed)
        speed["synthetic_readable_share"] = round(readable / len(syn_rows), 3)
        qv = np.random.default_rng(1).standard_normal((len(test_ids), 384)).astype(np.float32)
        qv /= np.linalg.norm(qv, axis=1, keepdims=True)
        del syn_rows
        for mode in ("lexical", "dense", "hybrid"):
            log(f"synthetic latency: {mode}")
            speed[f"synthetic_{mode}"] = latency(
                lambda i, m=mode: syn.search(queries[test_ids[i]], qv[i], allowed, mode=m),  # type: ignore[misc]
                len(test_ids),
            )
        speed["synthetic_hybrid_where"] = latency(
            lambda i: syn.search(queries[test_ids[i]], qv[i], allowed, where={"lang": "de"}), len(test_ids)
        )

    if not args.no_ablations and embeddings is not None:
        out["ablations"] = []
        for name, settings in ABLATIONS:
            log(f"ablation: {name}")
            candidate = build(settings)
            train = evaluate(candidate, docs, queries, qrels["train"], qvec)["ndcg@10"]
            test = evaluate(candidate, docs, queries, qrels["test"], qvec)["ndcg@10"]
            out["ablations"].append({"name": name, "train_ndcg@10": round(train, 4), "test_ndcg@10": round(test, 4)})
    speed["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print_report(out)


def print_report(out: dict[str, Any]) -> None:
    """The tables, as text."""
    print(f"\nSciFact test ({out['test_queries']} queries, {out['corpus_rows']:,} documents)")
    print(f"{'system':<30} {'nDCG@10':>8} {'R@100':>7} {'MRR@10':>7}")
    for name, m in out["quality"].items():
        print(f"{name:<30} {m['ndcg@10']:>8.3f} {m['recall@100']:>7.3f} {m['mrr@10']:>7.3f}")
    s = out["speed"]
    print("\nSpeed (one BLAS thread)")
    build = f"  index build: SciFact {s['scifact_build_s']} s"
    if "synthetic_rows" in s:
        build += f", {s['synthetic_rows']:,} synthetic chunks {s['synthetic_build_s']} s"
    print(build)
    if "embed_texts_per_s" in s:
        print(f"  MiniLM: {s['embed_texts_per_s']} documents/s, one query {s['embed_one_query_ms']} ms")
    print(f"  {'search latency (k=10)':<26} {'SciFact p50/p95 ms':>20} {'synthetic p50/p95 ms':>22}")
    for mode in ("lexical", "dense", "hybrid", "hybrid_where"):
        a, b = s.get(f"scifact_{mode}"), s.get(f"synthetic_{mode}")
        cell = lambda x: f"{x['p50_ms']:.2f} / {x['p95_ms']:.2f}" if x else "-"  # noqa: E731
        if a or b:
            print(f"  {mode.replace('_', ' + '):<26} {cell(a):>20} {cell(b):>22}")
    if "synthetic_readable_share" in s:
        print(f"  synthetic caller reads {s['synthetic_readable_share']:.0%} of the chunks; 'where' keeps a quarter")
    print(f"  peak RSS: {s['peak_rss_mb']} MB")
    if out.get("ablations"):
        print("\nConfigurations tried (chosen on train; test reported, never tuned on)")
        print(f"{'configuration':<62} {'train':>7} {'test':>7}")
        for a in out["ablations"]:
            print(f"{a['name']:<62} {a['train_ndcg@10']:>7.3f} {a['test_ndcg@10']:>7.3f}")


if __name__ == "__main__":
    main()
