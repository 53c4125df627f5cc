"""Chunking strategies: cut a document's text into `Piece`s for indexing.

Owns the three strategies and their settings:

- `fixed`: windows of `size` characters overlapping by `overlap`, cut at whitespace where possible;
- `structure`: Markdown-aware blocks (headings, paragraphs, lists, tables, fenced code) kept whole where they fit,
  small blocks of one section packed together, nothing merged across a heading, oversized blocks split at their
  natural seams (table rows with the header repeated, list items, sentences, lines);
- `sentence_window`: one piece per sentence, with `window` sentences either side as the context shown to a model.

Offsets point into the text given: `text[piece.start:piece.end] == piece.text` for every piece, except the
continuation pieces of a split table, whose text is the table's header rows, a newline, then that slice.
Headings are carried in `Piece.heading` ("Section > Subsection") and never prefixed to `Piece.text`.

Must not: do I/O, keep state between calls or depend on anything but the text and the settings (deterministic).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gengate.rag.types import Piece

__all__ = ["ChunkingSettings", "chunk_text", "split_sentences"]


class ChunkingSettings(BaseModel):
    """How to cut documents into chunks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["fixed", "structure", "sentence_window"] = "structure"
    size: int = Field(1200, ge=20, le=1_000_000, description="target (maximum) characters per chunk")
    overlap: int = Field(200, ge=0, description="characters shared by consecutive chunks (fixed only)")
    window: int = Field(2, ge=0, le=50, description="sentences of context on each side (sentence_window only)")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingSettings:
        if self.strategy == "fixed" and self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size}) for fixed chunking")
        return self


def chunk_text(text: str, settings: ChunkingSettings) -> list[Piece]:
    """Cut `text` into pieces with the strategy of `settings`; blank text gives no pieces."""
    if not text.strip():
        return []
    if settings.strategy == "fixed":
        return [Piece(text[s:e], s, e) for s, e in _fixed_spans(text, 0, len(text), settings.size, settings.overlap)]
    if settings.strategy == "structure":
        return _structure(text, settings.size)
    return _sentence_windows(text, settings.window)


# --- spans ------------------------------------------------------------------------------------------------------


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """The span without surrounding whitespace (start == end when it is all whitespace)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _last_space(text: str, lo: int, stop: int) -> int:
    """The last whitespace position in text[lo:stop + 1], or -1."""
    for i in range(stop, lo - 1, -1):
        if text[i].isspace():
            return i
    return -1


def _fixed_spans(text: str, start: int, end: int, size: int, overlap: int) -> Iterator[tuple[int, int]]:
    """Windows of at most `size` characters over text[start:end], cut at whitespace when one is in the back half
    of the window; each next window starts at the first word at or after `overlap` characters before the cut."""
    pos, _ = _trim(text, start, end)
    while pos < end:
        stop = min(pos + size, end)
        if stop < end:
            # Prefer a paragraph break, then a line break, then any space in the back half of the window.
            lo = pos + size // 2
            for cut in (text.rfind("\n\n", lo, stop + 1), text.rfind("\n", lo, stop + 1), _last_space(text, lo, stop)):
                if cut > pos:
                    stop = cut
                    break
        s, e = _trim(text, pos, stop)
        if e > s:
            yield s, e
        if stop >= end:
            return
        nxt = max(stop - overlap, pos + 1)
        # Start the next window on a word boundary so no word is cut at its head.
        while nxt < stop and not (text[nxt - 1].isspace() and not text[nxt].isspace()):
            nxt += 1
        while nxt < end and text[nxt].isspace():
            nxt += 1
        pos = nxt


# --- sentences --------------------------------------------------------------------------------------------------

# Words that end with a period without ending a sentence. Titles are matched with their capital only ("ms." is a
# unit, "Ms." a title); the rest in any case.
_TITLE_TEXT = "Mr Mrs Ms Dr Prof Sr Jr St Rev Gen Sen Rep Gov No Nos Vol Fig Figs Eq Eqs Inc Ltd Co Corp"
_ABBREVIATION_TEXT = """e.g i.e etc vs cf al approx ca pp fig figs eq eqs jan feb mar apr jun jul aug sep sept oct nov
dec u.s u.k u.n e.u a.m p.m ph.d m.d b.sc m.sc"""
_TITLES = frozenset(_TITLE_TEXT.split())
_ABBREVIATIONS = frozenset(_ABBREVIATION_TEXT.split())
# A candidate boundary: terminal punctuation, optional closing quotes/brackets, whitespace, then a plausible start.
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s+[\"'“‘(\[]?[A-Z0-9])")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")


def _is_abbreviation(text: str, dot: int) -> bool:
    """True when the period at `dot` ends an abbreviation or an initial rather than a sentence."""
    if text[dot] != ".":
        return False
    match = _WORD_BEFORE.search(text, max(0, dot - 12), dot)
    if match is None:
        return False
    word = match.group(1)
    if len(word) == 1 and word.isupper():  # an initial: "J. Smith"
        return True
    word = word.rstrip(".")
    return word in _TITLES or word.lower() in _ABBREVIATIONS


def split_sentences(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Sentence spans of text[start:end]: cut after . ! ? when the next word starts like a sentence, except after
    abbreviations (e.g., Dr., U.S.) and initials; decimals never split. Blank lines always end a sentence."""
    stop = len(text) if end is None else end
    spans: list[tuple[int, int]] = []
    for para_start, para_end in _paragraphs(text, start, stop):
        pos = para_start
        for match in _BOUNDARY.finditer(text, para_start, para_end):
            if _is_abbreviation(text, match.start()):
                continue
            s, e = _trim(text, pos, match.end())
            if e > s:
                spans.append((s, e))
            pos = match.end()
        s, e = _trim(text, pos, para_end)
        if e > s:
            spans.append((s, e))
    return spans


def _paragraphs(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    pos = start
    for match in re.compile(r"\n[ \t]*\n").finditer(text, start, end):
        yield pos, match.start()
        pos = match.end()
    yield pos, end


# --- Markdown blocks --------------------------------------------------------------------------------------------

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t#]*$")
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+")
_TABLE_SEPARATOR = re.compile(r"^[ \t|:\-]+$")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")


@dataclass(frozen=True, slots=True)
class _Block:
    kind: Literal["heading", "paragraph", "list", "table", "code"]
    start: int
    end: int
    heading: str  # the heading path this block belongs to (for a heading: the path it opens)


def _is_table_line(line: str) -> bool:
    return " | " in line or line.lstrip().startswith("|")


def _is_separator(line: str) -> bool:
    return bool(_TABLE_SEPARATOR.match(line)) and "-" in line


def _line_kind(line: str) -> str:
    if not line.strip():
        return "blank"
    if _HEADING.match(line):
        return "heading"
    if _FENCE.match(line):
        return "fence"
    if _is_table_line(line):
        return "table"
    if _LIST_ITEM.match(line):
        return "list"
    return "text"


def _blocks(text: str) -> list[_Block]:
    """Headings, paragraphs, lists, tables and fenced code blocks, in order, with their heading paths."""
    lines: list[tuple[int, int]] = []  # (start, end) of each line, newline excluded
    pos = 0
    for line in text.split("\n"):
        lines.append((pos, pos + len(line)))
        pos += len(line) + 1
    stack: list[tuple[int, str]] = []
    blocks: list[_Block] = []
    current: tuple[str, int, int] | None = None  # kind, start, end of the block being read
    fence: str | None = None

    def flush() -> None:
        nonlocal current
        if current is not None:
            s, e = _trim(text, current[1], current[2])
            if e > s:
                blocks.append(_Block(current[0], s, e, _path(stack)))  # type: ignore[arg-type]
            current = None

    for s, e in lines:
        line = text[s:e]
        if fence is not None:  # inside fenced code: nothing is a heading, table or list
            current = ("code", current[1] if current else s, e)
            if line.strip().startswith(fence):
                fence = None
                flush()
            continue
        kind = _line_kind(line)
        if kind == "blank":
            flush()
        elif kind == "heading":
            flush()
            match = _HEADING.match(line)
            assert match is not None
            level = len(match.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, match.group(2).strip()))
            blocks.append(_Block("heading", s, e, _path(stack)))
        elif kind == "fence":
            flush()
            fence = _FENCE.match(line).group(1)  # type: ignore[union-attr]
            current = ("code", s, e)
        elif current is None:
            current = ("paragraph" if kind == "text" else kind, s, e)
        elif (kind == "table") != (current[0] == "table"):
            flush()
            current = ("paragraph" if kind == "text" else kind, s, e)
        elif kind == "list" and current[0] == "paragraph":
            flush()
            current = ("list", s, e)
        else:  # continuation: paragraph text, another list item or an item's wrapped line, another table row
            current = (current[0], current[1], e)
    flush()
    return blocks


def _path(stack: list[tuple[int, str]]) -> str:
    return " > ".join(title for _, title in stack if title)


# --- structure strategy -----------------------------------------------------------------------------------------


def _structure(text: str, size: int) -> list[Piece]:
    pieces: list[Piece] = []
    group: list[_Block] = []

    def close_group() -> None:
        if group:
            pieces.append(Piece(text[group[0].start : group[-1].end], group[0].start, group[-1].end, group[0].heading))
            group.clear()

    for block in _blocks(text):
        if block.kind == "heading":  # a section boundary: never pack across it
            close_group()
            continue
        if block.end - block.start > size:
            close_group()
            pieces.extend(_split_block(text, block, size))
            continue
        if group and block.end - group[0].start > size:
            close_group()
        group.append(block)
    close_group()
    return pieces


def _pack(spans: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """Consecutive spans packed greedily into groups no longer than `size` (a longer span stays alone)."""
    out: list[tuple[int, int]] = []
    for s, e in spans:
        if out and e - out[-1][0] <= size:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def _split_spans(text: str, spans: list[tuple[int, int]], size: int, finer: str) -> list[tuple[int, int]]:
    """Spans no longer than `size`: spans that are too long are cut at sentences, else by fixed windows."""
    out: list[tuple[int, int]] = []
    for s, e in spans:
        if e - s <= size:
            out.append((s, e))
        elif finer == "sentences":
            out += _split_spans(text, _pack(split_sentences(text, s, e), size), size, "fixed")
        else:
            out += _fixed_spans(text, s, e, size, 0)
    return out


def _line_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    spans = []
    pos = start
    for line in text[start:end].split("\n"):
        s, e = _trim(text, pos, pos + len(line))
        if e > s:
            spans.append((s, e))
        pos += len(line) + 1
    return spans


def _list_items(text: str, block: _Block) -> list[tuple[int, int]]:
    """Item spans of a list block: a line that does not start with a marker belongs to the item above."""
    items: list[tuple[int, int]] = []
    for s, e in _line_spans(text, block.start, block.end):
        if items and not _LIST_ITEM.match(text[s:e]):
            items[-1] = (items[-1][0], e)
        else:
            items.append((s, e))
    return items


def _split_block(text: str, block: _Block, size: int) -> list[Piece]:
    """Pieces of a block longer than `size`, cut at the seams of its kind."""
    if block.kind == "table":
        return _split_table(text, block, size)
    if block.kind == "list":
        spans = _split_spans(text, _pack(_list_items(text, block), size), size, "sentences")
    elif block.kind == "code":
        spans = _split_spans(text, _pack(_line_spans(text, block.start, block.end), size), size, "fixed")
    else:
        spans = _split_spans(text, _pack(split_sentences(text, block.start, block.end), size), size, "fixed")
    return [Piece(text[s:e], s, e, block.heading) for s, e in spans]


def _split_table(text: str, block: _Block, size: int) -> list[Piece]:
    """Rows packed into pieces of at most `size` characters; the first piece starts with the header rows as they
    stand in the text, every later piece gets a copy of them in front of its rows."""
    rows = _line_spans(text, block.start, block.end)
    n_header = 2 if len(rows) > 1 and _is_separator(text[rows[1][0] : rows[1][1]]) else 1
    header_start, header_end = rows[0][0], rows[n_header - 1][1]
    header = text[header_start:header_end]
    budget = size - len(header) - 1
    if len(rows) == n_header or budget < size // 4:  # no body, or a header too big to repeat: cut it as lines
        spans = _split_spans(text, _pack(rows, size), size, "fixed")
        return [Piece(text[s:e], s, e, block.heading) for s, e in spans]
    groups = _split_spans(text, _pack(rows[n_header:], budget), budget, "fixed")
    pieces: list[Piece] = []
    for i, (s, e) in enumerate(groups):
        if i == 0 and e - header_start <= size:
            pieces.append(Piece(text[header_start:e], header_start, e, block.heading))
        else:
            pieces.append(Piece(f"{header}\n{text[s:e]}", s, e, block.heading))
    return pieces


# --- sentence windows -------------------------------------------------------------------------------------------


def _sentence_windows(text: str, window: int) -> list[Piece]:
    """One piece per sentence; its context spans `window` sentences either side within the same section."""
    sections: list[tuple[str, list[tuple[int, int]]]] = []
    for block in _blocks(text):
        if block.kind == "heading":
            sections.append((block.heading, []))
            continue
        if not sections or sections[-1][0] != block.heading:
            sections.append((block.heading, []))
        if block.kind in ("paragraph", "list"):
            # Every list item starts a sentence, even when the item above has no final punctuation.
            parts = _list_items(text, block) if block.kind == "list" else [(block.start, block.end)]
            units = [u for s, e in parts for u in split_sentences(text, s, e)]
        elif block.kind == "table":  # one unit per row; the |---| separator row is no sentence
            units = [(s, e) for s, e in _line_spans(text, block.start, block.end) if not _is_separator(text[s:e])]
        else:  # a code block stays one unit
            units = [(block.start, block.end)]
        sections[-1][1].extend(units)
    pieces: list[Piece] = []
    for heading, spans in sections:
        for i, (s, e) in enumerate(spans):
            cs, ce = spans[max(0, i - window)][0], spans[min(len(spans) - 1, i + window)][1]
            pieces.append(Piece(text[s:e], s, e, heading, text[cs:ce]))
    return pieces
