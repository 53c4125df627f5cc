"""The permission-aware hybrid index: deny by default, results independent of unreadable rows, filters, modes."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pytest
from pydantic import ValidationError

from gengate.embed.minilm import available
from gengate.rag.index import MemoryIndex, PartVectors, RetrievalSettings
from gengate.rag.lexical import Analyzer, Bm25Settings, LexicalIndex, light_stem
from gengate.rag.types import IndexRow

VOCAB = [f"w{i}" for i in range(40)] + ["kidney", "kidneys", "renal", "failure", "the", "of", "cells", "cell"]
TOKENS = ["group:a", "group:b", "group:c", "group:d", "team:x", "user:u1", "user:u2"]
LANGS = ["en", "de", "fr"]
DIM = 16
MODES = ("hybrid", "lexical", "dense")
SETTINGS = {
    "default": RetrievalSettings(),
    "everything_on": RetrievalSettings(
        candidates=15, prf_docs=3, prf_terms=5, dense_prf_docs=3, part_weight=0.3, lexical_weight=0.4
    ),
    "rrf": RetrievalSettings(fusion="rrf", candidates=20),
    "sum_fields": RetrievalSettings(lexical=Bm25Settings(combine="sum", stem="plural", title_weight=3.0)),
}


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class Corpus:
    """Random rows with random access lists and metadata, their embeddings and per-row part vectors."""

    def __init__(self, seed: int, n: int = 120) -> None:
        rng = random.Random(seed)
        nrng = np.random.default_rng(seed)
        self.rows: list[IndexRow] = []
        for i in range(n):
            access = frozenset(rng.sample(TOKENS, rng.choice([0, 1, 1, 2, 3])))
            metadata = {"lang": rng.choice(LANGS)} if rng.random() < 0.9 else {}
            if rng.random() < 0.5:
                metadata["heading"] = " ".join(rng.choices(VOCAB, k=2))
            self.rows.append(
                IndexRow(
                    chunk_id=1000 + i,
                    doc_id=f"d{i // 3}",
                    title=" ".join(rng.choices(VOCAB, k=rng.randint(0, 4))),
                    text=" ".join(rng.choices(VOCAB, k=rng.randint(3, 30))),
                    access=access,
                    metadata=metadata,
                )
            )
        self.embeddings = unit(nrng, n)
        self.part_rows = np.array([i for i in range(n) for _ in range(rng.randint(0, 3))], dtype=np.int64)
        self.part_vectors = unit(nrng, len(self.part_rows))

    def index(self, keep: Sequence[int] | None = None, settings: RetrievalSettings | None = None) -> MemoryIndex:
        """An index over the rows at `keep` (all by default), in their original order."""
        keep = list(range(len(self.rows))) if keep is None else list(keep)
        new_pos = {old: new for new, old in enumerate(keep)}
        selected = [j for j, r in enumerate(self.part_rows) if int(r) in new_pos]
        parts = PartVectors(
            rows=np.array([new_pos[int(self.part_rows[j])] for j in selected], dtype=np.int64),
            vectors=self.part_vectors[selected].reshape(-1, DIM),
        )
        return MemoryIndex([self.rows[i] for i in keep], self.embeddings[keep], settings=settings, parts=parts)


def random_queries(seed: int, n: int = 6) -> list[tuple[str, np.ndarray]]:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed + 7)
    words = [*VOCAB, "unknownword", "zzz"]
    return [(" ".join(rng.choices(words, k=rng.randint(1, 5))), unit(nrng, 1)[0]) for _ in range(n)]


@pytest.mark.parametrize("settings_name", sorted(SETTINGS))
@pytest.mark.parametrize("seed", range(4))
def test_search_equals_search_over_an_index_of_only_the_readable_rows(seed: int, settings_name: str) -> None:
    settings = SETTINGS[settings_name]
    corpus = Corpus(seed)
    full = corpus.index(settings=settings)
    rng = random.Random(seed)
    for trial in range(3):
        allowed = frozenset(rng.sample(TOKENS, rng.randint(1, 3)))
        readable = [i for i, r in enumerate(corpus.rows) if r.access & allowed]
        assert 0 < len(readable) < len(corpus.rows)
        own = corpus.index(readable, settings=settings)
        lang = rng.choice(LANGS)
        matching = [i for i in readable if corpus.rows[i].metadata.get("lang") == lang]
        own_filtered = corpus.index(matching, settings=settings)
        for query, vec in random_queries(seed * 10 + trial):
            for mode in MODES:
                for k in (1, 5, 50):
                    expected = own.search(query, vec, allowed, k=k, mode=mode)
                    assert full.search(query, vec, allowed, k=k, mode=mode) == expected
                    where = {"lang": lang}
                    expected = own.search(query, vec, allowed, k=k, mode=mode, where=where)
                    assert full.search(query, vec, allowed, k=k, mode=mode, where=where) == expected
                    assert own_filtered.search(query, vec, allowed, k=k, mode=mode) == expected


def test_statistics_ignore_unreadable_rows_in_the_lexical_index() -> None:
    texts = ["apple banana", "apple cherry", "secret apple apple", "banana split", "cherry pie"]
    readable = np.array([True, True, False, True, False])
    full = LexicalIndex(texts, settings=Bm25Settings(stem="none"))
    own = LexicalIndex([t for t, ok in zip(texts, readable, strict=True) if ok], settings=Bm25Settings(stem="none"))
    rows, scores = full.scores(["apple", "banana"], readable)
    own_rows, own_scores = own.scores(["apple", "banana"], np.ones(3, dtype=bool))
    assert rows.tolist() == [0, 1, 3]
    assert own_rows.tolist() == [0, 1, 2]
    assert scores.tolist() == own_scores.tolist()


def test_nothing_allowed_or_nothing_readable_returns_nothing() -> None:
    corpus = Corpus(1)
    index = corpus.index()
    vec = corpus.embeddings[0]
    for mode in MODES:
        assert index.search("w1 w2", vec, frozenset(), mode=mode) == []
        assert index.search("w1 w2", vec, frozenset({"group:nobody"}), mode=mode) == []


def test_rows_with_an_empty_access_list_are_never_returned() -> None:
    corpus = Corpus(2)
    index = corpus.index()
    nobody = {r.chunk_id for r in corpus.rows if not r.access}
    assert nobody
    hits = index.search("w1 w2 w3", corpus.embeddings[0], frozenset(TOKENS), k=len(corpus.rows))
    assert hits and not nobody & {h.chunk_id for h in hits}


def test_a_restricted_best_match_never_appears() -> None:
    vec = np.eye(DIM, dtype=np.float32)
    rows = [
        IndexRow(1, "secret", "Merger plan", "the confidential merger plan for acme", frozenset({"group:board"})),
        IndexRow(2, "pub1", "Lunch", "the canteen menu for this week", frozenset({"group:staff"})),
        IndexRow(3, "pub2", "Plans", "holiday plan for the office", frozenset({"group:staff"})),
    ]
    index = MemoryIndex(rows, vec[:3])
    for mode in MODES:
        board = index.search("confidential merger plan acme", vec[0], frozenset({"group:board"}), k=3, mode=mode)
        assert board[0].chunk_id == 1
        staff = index.search("confidential merger plan acme", vec[0], frozenset({"group:staff"}), k=3, mode=mode)
        assert 1 not in {h.chunk_id for h in staff}
        assert staff  # the readable rows are still ranked


def test_metadata_filter_keeps_only_matching_rows() -> None:
    corpus = Corpus(3)
    index = corpus.index()
    allowed = frozenset(TOKENS)
    by_id = {r.chunk_id: r for r in corpus.rows}
    for mode in MODES:
        hits = index.search("w1 w2 w3 w4", corpus.embeddings[5], allowed, k=200, mode=mode, where={"lang": "de"})
        assert hits
        assert all(by_id[h.chunk_id].metadata.get("lang") == "de" for h in hits)
        assert index.search("w1", corpus.embeddings[5], allowed, mode=mode, where={"lang": "xx"}) == []
        assert index.search("w1", corpus.embeddings[5], allowed, mode=mode, where={"missing": "en"}) == []


def test_exact_term_match_ranks_first_lexically() -> None:
    rows = [
        IndexRow(i, f"d{i}", "", text, frozenset({"group:all"}))
        for i, text in enumerate(
            [
                "general notes about cells and biology",
                "the zebrafish regeneration study of fins",
                "cells divide and cells grow",
                "notes on regeneration in general",
            ]
        )
    ]
    hits = MemoryIndex(rows, None).search("zebrafish", None, frozenset({"group:all"}), mode="lexical")
    assert [h.chunk_id for h in hits] == [1]
    hits = MemoryIndex(rows, None).search("zebrafish fin regeneration", None, frozenset({"group:all"}))
    assert hits[0].chunk_id == 1 and hits[0].lexical_rank == 1


def test_title_field_counts_and_heading_metadata_joins_it() -> None:
    rows = [
        IndexRow(1, "a", "Kidney failure", "a study of outcomes", frozenset({"g"})),
        IndexRow(2, "b", "Outcomes", "a study of outcomes", frozenset({"g"}), metadata={"heading": "Kidney failure"}),
        IndexRow(3, "c", "Outcomes", "a study of outcomes", frozenset({"g"})),
    ]
    hits = MemoryIndex(rows, None).search("kidney failure", None, frozenset({"g"}), mode="lexical")
    assert {h.chunk_id for h in hits} == {1, 2}


def test_hybrid_without_vectors_is_lexical_and_dense_without_vectors_is_an_error() -> None:
    corpus = Corpus(4)
    allowed = frozenset(TOKENS)
    no_vectors = MemoryIndex(corpus.rows, None)
    lexical = no_vectors.search("w1 w2", None, allowed, mode="lexical")
    assert no_vectors.search("w1 w2", corpus.embeddings[0], allowed) == lexical
    with_vectors = corpus.index()
    assert with_vectors.search("w1 w2", None, allowed) == with_vectors.search("w1 w2", None, allowed, mode="lexical")
    with pytest.raises(ValueError, match="dense search needs"):
        no_vectors.search("w1", corpus.embeddings[0], allowed, mode="dense")


def test_hybrid_reports_each_retrievers_rank() -> None:
    corpus = Corpus(5)
    i = next(j for j, r in enumerate(corpus.rows) if r.access)
    hits = corpus.index().search("w1 w2 w3", corpus.embeddings[i], frozenset(TOKENS), k=10)
    assert len(hits) == 10
    assert all(h.lexical_rank is not None or h.dense_rank is not None for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert any(h.dense_rank == 1 for h in hits)


def test_dense_mode_ranks_by_similarity() -> None:
    corpus = Corpus(6)
    readable = [r.chunk_id for r in corpus.rows if r.access]
    i = next(j for j, r in enumerate(corpus.rows) if r.access)
    hits = corpus.index().search("", corpus.embeddings[i], frozenset(TOKENS), k=3, mode="dense")
    assert hits[0].chunk_id == corpus.rows[i].chunk_id and hits[0].chunk_id in readable
    assert hits[0].score == pytest.approx(1.0, abs=0.02)


def test_bad_shapes_and_settings_are_rejected() -> None:
    corpus = Corpus(7)
    with pytest.raises(ValueError, match="embeddings must have shape"):
        MemoryIndex(corpus.rows, corpus.embeddings[:3])
    with pytest.raises(ValueError, match="dimension"):
        corpus.index().search("w1", np.ones(DIM + 1, dtype=np.float32), frozenset(TOKENS))
    with pytest.raises(ValidationError, match="candidates"):
        RetrievalSettings(candidates=0)
    with pytest.raises(ValidationError, match="fusion"):
        RetrievalSettings(fusion="max")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="extra"):
        RetrievalSettings(top_k=3)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("word", "stem"),
    [("kidneys", "kidney"), ("studies", "study"), ("cells", "cell"), ("running", "run"), ("treated", "treat"),
     ("analysis", "analysis"), ("gas", "gas"), ("il6", "il6"), ("größe", "größe"), ("activation", "activat"),
     ("activates", "activat"), ("activated", "activat"), ("increases", "increas"), ("agree", "agree")],
)  # fmt: skip
def test_light_stemmer(word: str, stem: str) -> None:
    assert light_stem(word) == stem


def test_analyzer_lowercases_splits_unicode_words_and_drops_stopwords() -> None:
    assert Analyzer(stem="none").terms("The Größe of IL-6 in Zürich's cells") == [
        "größe",
        "il",
        "6",
        "zürich",
        "s",
        "cells",
    ]


@pytest.mark.skipif(not available(), reason="the MiniLM model package is not installed")
def test_minilm_embeddings_find_the_paraphrase() -> None:
    from gengate.embed.minilm import MiniLMEncoder

    texts = [
        "Regular exercise lowers blood pressure in older adults.",
        "The central bank raised interest rates again this quarter.",
        "Photosynthesis converts light into chemical energy in plants.",
    ]
    encoder = MiniLMEncoder()
    rows = [IndexRow(i, str(i), "", t, frozenset({"group:all"})) for i, t in enumerate(texts)]
    index = MemoryIndex(rows, encoder.encode(texts))
    query = "Does physical activity reduce hypertension?"
    hits = index.search(query, encoder.encode([query])[0], frozenset({"group:all"}), k=3, mode="dense")
    assert hits[0].chunk_id == 0
    assert index.search(query, encoder.encode([query])[0], frozenset({"group:all"}), k=1)[0].chunk_id == 0
