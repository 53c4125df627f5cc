"""Chunking strategies: offsets, sizes, overlap, Markdown structure, sentence windows and settings validation."""

from __future__ import annotations

import itertools
import random
import re

import pytest
from pydantic import ValidationError

from gengate.rag.chunk import ChunkingSettings, chunk_text, split_sentences
from gengate.rag.types import Piece

_WORD_TEXT = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau"
WORDS = _WORD_TEXT.split()


def random_prose(seed: int, n_words: int = 600) -> str:
    rng = random.Random(seed)
    out = []
    for i in range(n_words):
        word = rng.choice(WORDS)
        out.append(word.capitalize() if i == 0 or out[-1].endswith(".") else word)
        if rng.random() < 0.1:
            out[-1] += "."
        if rng.random() < 0.02:
            out[-1] += "\n\n"
    return " ".join(out)


DOC = """Preamble before any heading.

# Guide

Short intro.

Second small paragraph.

## Install

- first item
- second item
  wrapped onto a second line
- third item

## Prices

| product | price |
|---------|-------|
| apple | 1 |
| pear | 2 |
| plum | 3 |

# Reference

Last words.
"""


def assert_slices(text: str, pieces: list[Piece]) -> None:
    for p in pieces:
        assert text[p.start : p.end] == p.text


@pytest.mark.parametrize("strategy", ["fixed", "structure", "sentence_window"])
def test_blank_text_gives_no_pieces(strategy: str) -> None:
    settings = ChunkingSettings(strategy=strategy)  # type: ignore[arg-type]
    assert chunk_text("", settings) == []
    assert chunk_text("  \n\n\t ", settings) == []


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("size", "overlap"), [(100, 0), (100, 30), (250, 100), (60, 59)])
def test_fixed_windows_slice_back_respect_size_and_overlap_and_cover_the_text(
    seed: int, size: int, overlap: int
) -> None:
    text = random_prose(seed)
    pieces = chunk_text(text, ChunkingSettings(strategy="fixed", size=size, overlap=overlap))
    assert_slices(text, pieces)
    assert all(0 < len(p.text) <= size for p in pieces)
    for a, b in itertools.pairwise(pieces):
        assert a.start < b.start
        assert not text[a.end : b.start].strip()  # at most whitespace between: every word lands in a piece
        assert a.end - b.start <= overlap
    for word in re.finditer(r"\S+", text):  # every word lies whole inside some piece
        assert any(p.start <= word.start() and word.end() <= p.end for p in pieces)
    assert pieces[0].start == 0 and pieces[-1].end == len(text.rstrip())


def test_fixed_windows_cut_at_whitespace_not_inside_words() -> None:
    text = random_prose(7)
    for p in chunk_text(text, ChunkingSettings(strategy="fixed", size=120, overlap=40)):
        assert p.start == 0 or text[p.start - 1].isspace()
        assert p.end == len(text) or text[p.end].isspace() or not text[p.end - 1].isalnum()


def test_fixed_is_deterministic() -> None:
    text = random_prose(3)
    settings = ChunkingSettings(strategy="fixed", size=200, overlap=50)
    assert chunk_text(text, settings) == chunk_text(text, settings)


def test_structure_keeps_blocks_whole_packs_small_ones_and_tracks_heading_paths() -> None:
    pieces = chunk_text(DOC, ChunkingSettings(strategy="structure", size=200))
    assert_slices(DOC, pieces)
    by_text = {p.text: p.heading for p in pieces}
    assert by_text["Preamble before any heading."] == ""
    # Two small paragraphs of one section are packed into one piece.
    assert by_text["Short intro.\n\nSecond small paragraph."] == "Guide"
    # The list and the table stay whole, each under its own subsection.
    assert by_text["- first item\n- second item\n  wrapped onto a second line\n- third item"] == "Guide > Install"
    table = next(p for p in pieces if p.text.startswith("| product"))
    assert table.text.count("\n") == 4 and table.heading == "Guide > Prices"
    assert by_text["Last words."] == "Reference"
    # Heading lines are never part of a piece's text.
    assert not any(line.startswith("#") for p in pieces for line in p.text.splitlines())


def test_structure_never_packs_across_a_heading() -> None:
    text = "# A\n\none\n\n## B\n\ntwo\n\n## C\n\nthree\n\n# D\n\nfour\n"
    pieces = chunk_text(text, ChunkingSettings(strategy="structure", size=1000))
    assert [(p.text, p.heading) for p in pieces] == [
        ("one", "A"),
        ("two", "A > B"),
        ("three", "A > C"),
        ("four", "D"),
    ]


def test_structure_splits_a_big_table_by_rows_repeating_the_header() -> None:
    rows = "\n".join(f"| item {i:02d} | value {i:02d} |" for i in range(40))
    text = f"# Data\n\n| name | value |\n|---|---|\n{rows}\n"
    pieces = chunk_text(text, ChunkingSettings(strategy="structure", size=150))
    assert len(pieces) > 3
    header = "| name | value |\n|---|---|"
    seen = []
    for i, p in enumerate(pieces):
        assert len(p.text) <= 150
        assert p.text.startswith(header + "\n")
        assert p.heading == "Data"
        if i == 0:
            assert text[p.start : p.end] == p.text
        else:  # the slice is the rows; the header is a copy in front of them
            assert p.text == f"{header}\n{text[p.start : p.end]}"
        body = p.text[len(header) + 1 :].splitlines()
        assert all(line.startswith("| item") for line in body)  # whole rows only
        seen += body
    assert seen == rows.splitlines()


def test_structure_splits_a_long_paragraph_at_sentence_boundaries() -> None:
    sentences = [f"Sentence number {i} talks about topic {i % 7} at some length." for i in range(30)]
    text = " ".join(sentences)
    pieces = chunk_text(text, ChunkingSettings(strategy="structure", size=200))
    assert_slices(text, pieces)
    assert all(len(p.text) <= 200 for p in pieces)
    assert all(p.text.endswith(".") and p.text[0].isupper() for p in pieces)
    assert " ".join(p.text for p in pieces) == text


def test_structure_splits_a_long_list_between_items() -> None:
    items = [f"- item {i} with a few words" for i in range(30)]
    text = "\n".join(items)
    pieces = chunk_text(text, ChunkingSettings(strategy="structure", size=100))
    assert_slices(text, pieces)
    assert all(len(p.text) <= 100 and p.text.startswith("- item") for p in pieces)
    assert [line for p in pieces for line in p.text.splitlines()] == items


def test_structure_does_not_read_headings_inside_code_fences() -> None:
    text = "# Top\n\n```\n# not a heading\nx = 1\n```\n\nafter\n"
    pieces = chunk_text(text, ChunkingSettings(strategy="structure", size=1000))
    assert [p.heading for p in pieces] == ["Top"]
    assert "# not a heading" in pieces[0].text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One. Two? Three!", ["One.", "Two?", "Three!"]),
        ("Dr. Smith met Mr. Jones. They talked.", ["Dr. Smith met Mr. Jones.", "They talked."]),
        ("Use tools e.g. hammers. Or not.", ["Use tools e.g. hammers.", "Or not."]),
        ("Sales in the U.S. Market rose. Fine.", ["Sales in the U.S. Market rose.", "Fine."]),
        ("The dose was 3.5 mg. It worked.", ["The dose was 3.5 mg.", "It worked."]),
        (
            "It reached 1.2 microm2/ms. In the capsule it fell.",
            ["It reached 1.2 microm2/ms.", "In the capsule it fell."],
        ),
        ("J. Smith wrote it. Done.", ["J. Smith wrote it.", "Done."]),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("no split. lowercase follows", ["no split. lowercase follows"]),
        ("First paragraph\n\nSecond paragraph", ["First paragraph", "Second paragraph"]),
    ],
)
def test_sentence_splitter(text: str, expected: list[str]) -> None:
    assert [text[s:e] for s, e in split_sentences(text)] == expected


def test_sentence_window_gives_each_sentence_with_its_neighbours_as_context() -> None:
    text = "S0 is here. S1 is here. S2 is here. S3 is here. S4 is here."
    pieces = chunk_text(text, ChunkingSettings(strategy="sentence_window", window=1))
    assert_slices(text, pieces)
    assert [p.text for p in pieces] == [f"S{i} is here." for i in range(5)]
    assert pieces[0].context == "S0 is here. S1 is here."
    assert pieces[2].context == "S1 is here. S2 is here. S3 is here."
    assert pieces[4].context == "S3 is here. S4 is here."
    assert pieces[2].shown == pieces[2].context


def test_sentence_window_stays_within_a_section() -> None:
    pieces = chunk_text(DOC, ChunkingSettings(strategy="sentence_window", window=2))
    assert_slices(DOC, pieces)
    last = pieces[-1]
    assert (last.text, last.heading, last.context) == ("Last words.", "Reference", "Last words.")
    table_rows = [p for p in pieces if p.heading == "Guide > Prices"]
    assert [p.text for p in table_rows][:2] == ["| product | price |", "| apple | 1 |"]  # no |---| row


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "fixed", "size": 100, "overlap": 100}, "overlap (100) must be smaller than size (100)"),
        ({"size": 5}, "size"),
        ({"overlap": -1}, "overlap"),
        ({"window": -1}, "window"),
        ({"strategy": "paragraphs"}, "strategy"),
        ({"sise": 100}, "sise"),
    ],
)
def test_settings_validation_names_the_problem(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ChunkingSettings(**kwargs)  # type: ignore[arg-type]


def test_overlap_limit_applies_to_fixed_only() -> None:
    assert ChunkingSettings(strategy="structure", size=100).overlap == 200
