"""Text extraction: one document file in, its title and Markdown-ish text out.

Owns: recognising the supported formats (Markdown, plain text, HTML, PDF, DOCX) by suffix, decoding them,
keeping their structure visible as Markdown (headings, list items, table rows) for the chunker downstream,
reading Markdown front matter, and the defences every untrusted file needs (size limit, strict encodings,
zip-bomb and XML-entity refusal).
Must not: decide who may read a document, chunk, walk folders, touch the database, or write files.
"""

from __future__ import annotations

import codecs
import io
import logging
import re
import zipfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import yaml

DEFAULT_MAX_BYTES = 50 * 1024 * 1024

#: Suffix (lower case) → format name.
FORMATS: dict[str, str] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
}
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(FORMATS)

# DOCX (zip) defences. A real document.xml compresses 5-20x; deflate tops out near 1000x on zeros.
_ZIP_MAX_ENTRIES = 10_000
_ZIP_MAX_TOTAL = 100 * 1024 * 1024
_ZIP_MAX_RATIO = 200
_ZIP_RATIO_FLOOR = 1024 * 1024  # entries smaller than this cannot hurt, and tiny XML parts compress very well
_PDF_MAX_ARRAY_ELEMENTS = 1_000_000
_DOCX_DOCUMENT = "word/document.xml"
_DOCX_STYLES = "word/styles.xml"
_DOCX_CORE = "docProps/core.xml"

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_DC_TITLE = "{http://purl.org/dc/elements/1.1/}title"

_XML_DECLARATIONS = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_ATX_H1 = re.compile(r"^#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_HEADING_NAME = re.compile(r"^heading\s*([1-6])$")
_HEADING_ID = re.compile(r"^heading([1-6])$", re.IGNORECASE)


class ExtractError(Exception):
    """A file could not be turned into text; the message names the file (never its full path)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Extracted:
    """A document's title, its text as Markdown-ish plain text, its front matter and its format name."""

    title: str
    text: str
    front_matter: dict[str, Any] = field(default_factory=dict)
    format: str = "text"


def format_for(path: Path) -> str | None:
    """The format name for a file's suffix (case-insensitive), or None when unsupported."""
    return FORMATS.get(path.suffix.lower())


def extract_file(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Extracted:
    """Read one document file and extract its title and text.

    Raises ExtractError for unsupported, oversized, undecodable, malformed, encrypted, hostile or empty files.
    """
    name = path.name
    fmt = format_for(path)
    if fmt is None:
        supported = ", ".join(SUPPORTED_SUFFIXES)
        raise ExtractError(f"{name}: unsupported file type '{path.suffix or '(none)'}' (supported: {supported})")
    data = _read_limited(path, max_bytes)
    if fmt == "markdown":
        front_matter, text = split_front_matter(_decode_text(data, name), name)
        return _finish(name, path.stem, text, front_matter, fmt, meta_title="")
    if fmt == "text":
        return _finish(name, path.stem, _decode_text(data, name), {}, fmt, meta_title="")
    if fmt == "html":
        text, html_title = html_to_text(_decode_text(data, name))
        return _finish(name, path.stem, text, {}, fmt, meta_title=html_title)
    if fmt == "pdf":
        text, pdf_title = _extract_pdf(data, name)
        return _finish(name, path.stem, text, {}, fmt, meta_title=pdf_title)
    text, core_title = _extract_docx(data, name)
    return _finish(name, path.stem, text, {}, fmt, meta_title=core_title)


def _finish(name: str, stem: str, text: str, front_matter: dict[str, Any], fmt: str, *, meta_title: str) -> Extracted:
    text = text.strip("\n")
    if not text.strip():
        raise ExtractError(f"{name}: no extractable text")
    fm_title = front_matter.get("title")
    title = (str(fm_title).strip() if fm_title is not None else "") or first_heading(text) or meta_title.strip()
    return Extracted(title=title or stem, text=text, front_matter=front_matter, format=fmt)


def _read_limited(path: Path, max_bytes: int) -> bytes:
    name = path.name
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ExtractError(f"{name} is {size:,} bytes, larger than the {max_bytes:,}-byte limit")
        with path.open("rb") as fh:
            # read() preallocates what it is asked for, so ask for the stat size, not the limit
            data = fh.read(size + 1)
            if len(data) > size:  # grew since stat()
                data += fh.read(max_bytes + 1 - len(data))
    except OSError as exc:
        raise ExtractError(f"{name}: cannot read ({exc.strerror or exc})") from exc
    if len(data) > max_bytes:
        raise ExtractError(f"{name} is larger than the {max_bytes:,}-byte limit")
    return data


# --- plain text -------------------------------------------------------------------------------------------------


def _decode_text(data: bytes, name: str) -> str:
    """UTF-8 (optionally with BOM) or UTF-16 with BOM; line endings normalised to \\n."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise ExtractError(f"{name} is not valid UTF-16 (byte offset {exc.start})") from exc
        if "\x00" in text:
            raise ExtractError(f"{name} looks binary (it contains NUL bytes)")
    else:
        if b"\x00" in data:
            raise ExtractError(f"{name} looks binary (it contains NUL bytes)")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            offset = exc.start + (3 if data.startswith(codecs.BOM_UTF8) else 0)
            raise ExtractError(f"{name} is not valid UTF-8 (byte offset {offset})") from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_front_matter(text: str, name: str) -> tuple[dict[str, Any], str]:
    """Split a leading `---` YAML block off Markdown text; returns (front matter, remaining text).

    An unclosed opening `---` is an ordinary thematic break, not front matter.
    """
    lines = text.split("\n")
    if not lines or lines[0].rstrip() != "---":
        return {}, text
    end = next((i for i in range(1, len(lines)) if lines[i].rstrip() in ("---", "...")), None)
    if end is None:
        return {}, text
    block = "\n".join(lines[1:end])
    try:
        loaded = yaml.safe_load(block)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 2}"  # +1 for 1-based, +1 for the opening ---
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ExtractError(f"{name}: malformed front matter{where}: {problem}") from exc
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ExtractError(f"{name}: front matter must be a mapping of keys to values, not {type(loaded).__name__}")
    return {str(k): v for k, v in loaded.items()}, "\n".join(lines[end + 1 :])


def first_heading(text: str) -> str:
    """The text of the first level-1 ATX heading (`# Title`) outside fenced code, or ''."""
    fenced = False
    for line in text.split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced and (m := _ATX_H1.match(line)):
            return m.group(1).strip()
    return ""


# --- HTML -------------------------------------------------------------------------------------------------------

_HTML_SKIP = frozenset({"script", "style", "nav", "noscript", "template"})
_HTML_BLOCKS = frozenset(
    {
        "p", "div", "section", "article", "header", "footer", "main", "aside", "blockquote", "pre", "hr",
        "ul", "ol", "dl", "dt", "dd", "figure", "figcaption", "form", "address", "details", "summary",
        "body", "html", "caption",
    }
)  # fmt: skip
_HTML_VOID = frozenset({"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "source", "wbr"})


class _HtmlToText(HTMLParser):
    """Collects blocks of (kind, text); consecutive list items and table rows stay on adjacent lines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, str]] = []
        self.title_parts: list[str] = []
        self._skip = 0
        self._in_title = False
        self._pre = 0
        self._inline: list[str] = []
        self._prefix = ""
        self._kind = "p"
        self._list_depth = 0
        self._table_depth = 0
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    # HTMLParser callbacks
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HTML_SKIP:
            self._skip += 1
            return
        if self._skip:
            return
        if tag == "title":
            self._in_title = True
        elif tag == "br":
            self._text("\n")
        elif self._table_depth > 1 or (self._cell is not None and tag not in ("td", "th", "tr", "table")):
            if tag == "table":
                self._table_depth += 1
            self._text(" ")  # nested structure inside a cell is flattened into the cell's text
        elif tag == "table":
            self._flush()
            self._table_depth += 1
        elif tag == "tr":
            self._end_row()
            self._row = []
        elif tag in ("td", "th"):
            self._end_cell()
            if self._row is None:
                self._row = []
            self._cell = []
        elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self._end_block()
            self._prefix, self._kind = "#" * int(tag[1]) + " ", "h"
        elif tag == "li":
            self._end_block()
            self._prefix, self._kind = "  " * max(self._list_depth - 1, 0) + "- ", "li"
        elif tag in ("ul", "ol"):
            self._end_block()
            self._list_depth += 1
        elif tag in _HTML_BLOCKS:
            self._flush()
            if tag == "pre":
                self._pre += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _HTML_VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HTML_SKIP:
            self._skip = max(self._skip - 1, 0)
            return
        if self._skip:
            return
        if tag == "title":
            self._in_title = False
        elif tag == "table":
            if self._table_depth > 1:
                self._table_depth -= 1
            elif self._table_depth == 1:
                self._end_row()
                self._table_depth = 0
        elif self._table_depth > 1:
            self._text(" ")
        elif tag == "tr":
            self._end_row()
        elif tag in ("td", "th"):
            self._end_cell()
        elif self._cell is not None:
            self._text(" ")
        elif (len(tag) == 2 and tag[0] == "h" and tag[1] in "123456") or tag == "li":
            self._end_block()
        elif tag in ("ul", "ol"):
            self._end_block()
            self._list_depth = max(self._list_depth - 1, 0)
        elif tag in _HTML_BLOCKS:
            self._flush()
            if tag == "pre":
                self._pre = max(self._pre - 1, 0)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self.title_parts.append(data)
        else:
            self._text(data)

    def close(self) -> None:
        super().close()
        self._end_row()
        self._end_block()

    # helpers
    def _text(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._row is not None and not data.strip():
            return  # whitespace between cells
        else:
            self._inline.append(data)

    def _end_cell(self) -> None:
        if self._cell is not None and self._row is not None:
            self._row.append(_collapse("".join(self._cell)))
        self._cell = None

    def _end_row(self) -> None:
        self._end_cell()
        if self._row is not None and any(self._row):
            self.blocks.append(("row", " | ".join(self._row)))
        self._row = None

    def _flush(self) -> None:
        """Emit the pending text as a block; a pending heading/item prefix survives an empty flush
        (`<li><p>text</p></li>`)."""
        raw = "".join(self._inline)
        self._inline = []
        if self._pre:
            text = raw.strip("\n")
        else:
            text = "\n".join(c for c in (_collapse(part) for part in raw.split("\n")) if c)
        if text.strip():
            if self._kind in ("h", "li"):
                text = text.replace("\n", " ")
            self.blocks.append((self._kind, self._prefix + text))
            self._prefix, self._kind = "", "p"

    def _end_block(self) -> None:
        self._flush()
        self._prefix, self._kind = "", "p"


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _join_blocks(blocks: list[tuple[str, str]]) -> str:
    out: list[str] = []
    previous = ""
    for kind, text in blocks:
        if out:
            out.append("\n" if kind == previous and kind in ("li", "row") else "\n\n")
        out.append(text)
        previous = kind
    return "".join(out)


def html_to_text(html: str) -> tuple[str, str]:
    """HTML as Markdown-ish text (headings, `- ` items, ` | ` table rows, paragraphs) and its `<title>`."""
    parser = _HtmlToText()
    parser.feed(html)
    parser.close()
    return _join_blocks(parser.blocks), _collapse("".join(parser.title_parts))


# --- PDF --------------------------------------------------------------------------------------------------------


@contextmanager
def _quiet_pypdf() -> Iterator[None]:
    """Hush pypdf's warnings about broken files while we extract; our ExtractError says what matters."""
    logger = logging.getLogger("pypdf")
    previous = logger.level
    if previous >= logging.ERROR:
        yield
        return
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _pdf_limits() -> AbstractContextManager[object]:
    """pypdf's resource limits for this extraction only (a context variable, so threads and tasks don't mix).

    pypdf >= 6 caps arrays at 100,000 elements; ordinary SEC 10-Q filings exceed that, so we allow ten times
    as many (the file-size limit still bounds the total). Older pypdf has no such limits and no such API.
    """
    import pypdf

    apply = getattr(pypdf, "apply_configuration", None)
    if apply is None:
        return nullcontext()
    limits: AbstractContextManager[object] = apply(array_maximum_element_count=_PDF_MAX_ARRAY_ELEMENTS)
    return limits


def _extract_pdf(data: bytes, name: str) -> tuple[str, str]:
    from pypdf import PdfReader  # imported here so that importing gengate.rag stays cheap

    pages: list[str] = []
    failed = 0
    title = ""
    with _quiet_pypdf(), _pdf_limits():
        try:
            reader = PdfReader(io.BytesIO(data), strict=False)
            # Many published PDFs (SEC filings among them) are encrypted only to set permissions, with an empty
            # user password: those open like any other. A real password is something we cannot know.
            if reader.is_encrypted and not reader.decrypt(""):
                raise ExtractError(f"{name} is an encrypted PDF that needs a password; decrypt it first")
            page_list = list(reader.pages)
            try:
                meta = reader.metadata
                title = str(meta.title or "") if meta is not None else ""
            except Exception:  # broken metadata should not cost us the text
                title = ""
        except ExtractError:
            raise
        except Exception as exc:  # pypdf raises many types (PdfReadError, KeyError, ValueError …) on broken files
            raise ExtractError(f"{name} is not a readable PDF ({type(exc).__name__}: {exc})") from exc
        for page in page_list:
            try:
                text = page.extract_text() or ""
            except Exception:  # one broken page should not lose the rest
                failed += 1
                continue
            text = text.replace("\x00", "").strip()
            if text:
                pages.append(text)
    if not pages and failed:
        raise ExtractError(f"{name}: no extractable text (text extraction failed on {failed} page(s))")
    title = " ".join(title.replace("\x00", "").split())
    # Producers often fill /Title with an accession or job number ("0000320193-23-000064"); the stem is better.
    return "\n\n".join(pages), title if any(ch.isalpha() for ch in title) else ""


# --- DOCX -------------------------------------------------------------------------------------------------------


def _extract_docx(data: bytes, name: str) -> tuple[str, str]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise ExtractError(f"{name} is not a valid DOCX file (not a readable zip archive)") from exc
    with archive:
        infos = archive.infolist()
        _check_zip(infos, name)
        entries = {info.filename: info for info in infos}
        if _DOCX_DOCUMENT not in entries:
            raise ExtractError(f"{name} is not a valid DOCX file (no {_DOCX_DOCUMENT})")
        document = _parse_xml(_read_entry(archive, entries[_DOCX_DOCUMENT], name), name, _DOCX_DOCUMENT)
        styles: dict[str, str] = {}
        if _DOCX_STYLES in entries:
            styles = _style_names(_parse_xml(_read_entry(archive, entries[_DOCX_STYLES], name), name, _DOCX_STYLES))
        title = ""
        if _DOCX_CORE in entries:
            core = _parse_xml(_read_entry(archive, entries[_DOCX_CORE], name), name, _DOCX_CORE)
            found = core.find(_DC_TITLE)
            title = (found.text or "").strip() if found is not None else ""
    body = document.find(f"{_W}body")
    if body is None:
        raise ExtractError(f"{name} is not a valid DOCX file ({_DOCX_DOCUMENT} has no body)")
    return _join_blocks(list(_docx_blocks(body, styles))), title


def _check_zip(infos: list[zipfile.ZipInfo], name: str) -> None:
    if len(infos) > _ZIP_MAX_ENTRIES:
        raise ExtractError(f"{name} refused: {len(infos):,} zip entries (limit {_ZIP_MAX_ENTRIES:,})")
    total = sum(info.file_size for info in infos)
    if total > _ZIP_MAX_TOTAL:
        raise ExtractError(f"{name} refused: {total:,} bytes uncompressed (limit {_ZIP_MAX_TOTAL:,}); zip bomb?")
    for info in infos:
        if info.file_size <= _ZIP_RATIO_FLOOR:
            continue
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > _ZIP_MAX_RATIO:
            limit = _ZIP_MAX_RATIO
            raise ExtractError(
                f"{name} refused: {info.filename} has compression ratio {ratio:,.0f} (limit {limit}); zip bomb?"
            )


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> bytes:
    """Read one entry, never more than its declared size (the central directory may lie)."""
    limit = min(info.file_size, _ZIP_MAX_TOTAL)
    chunks: list[bytes] = []
    got = 0
    try:
        with archive.open(info) as fh:
            while got <= limit:
                chunk = fh.read(min(1024 * 1024, limit + 1 - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise ExtractError(f"{name}: cannot read {info.filename} from the archive ({exc})") from exc
    if got > limit:
        raise ExtractError(f"{name} refused: {info.filename} inflates beyond its declared size; zip bomb?")
    return b"".join(chunks)


def _parse_xml(raw: bytes, name: str, member: str) -> ET.Element:
    """Parse a DOCX part, refusing DTDs and entity declarations (billion laughs) and non-UTF-8 parts."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in raw[:4]:
        raise ExtractError(f"{name} refused: {member} is not UTF-8 XML")
    declared = _XML_ENCODING.match(raw.removeprefix(codecs.BOM_UTF8))
    if declared and declared.group(1).lower() not in (b"utf-8", b"utf8"):
        raise ExtractError(f"{name} refused: {member} declares encoding {declared.group(1).decode()}; only UTF-8")
    if _XML_DECLARATIONS.search(raw):
        raise ExtractError(f"{name} refused: {member} contains a DOCTYPE or ENTITY declaration")
    try:
        return ET.fromstring(raw)  # noqa: S314 - DTDs/entities refused above; input is UTF-8 only
    except ET.ParseError as exc:
        raise ExtractError(f"{name}: malformed XML in {member} ({exc})") from exc


def _style_names(styles: ET.Element) -> dict[str, str]:
    """styleId → lower-case style name (ids are localised in some Word versions; names are not)."""
    out: dict[str, str] = {}
    for style in styles.iter(f"{_W}style"):
        style_id = style.get(f"{_W}styleId")
        name_el = style.find(f"{_W}name")
        if style_id and name_el is not None:
            out[style_id] = (name_el.get(f"{_W}val") or "").lower()
    return out


def _docx_blocks(container: ET.Element, styles: dict[str, str]) -> Iterator[tuple[str, str]]:
    for child in container:
        if child.tag == f"{_W}p":
            block = _docx_paragraph(child, styles)
            if block is not None:
                yield block
        elif child.tag == f"{_W}tbl":
            for row in child.iter(f"{_W}tr"):
                cells = [
                    _collapse(" ".join(_run_text(p) for p in cell.iter(f"{_W}p"))) for cell in row.findall(f"{_W}tc")
                ]
                if any(cells):
                    yield "row", " | ".join(cells)
        elif child.tag == f"{_W}sdt":
            content = child.find(f"{_W}sdtContent")
            if content is not None:
                yield from _docx_blocks(content, styles)


def _docx_paragraph(p: ET.Element, styles: dict[str, str]) -> tuple[str, str] | None:
    text = _run_text(p).strip()
    if not text:
        return None
    props = p.find(f"{_W}pPr")
    style_id = ""
    list_level: int | None = None
    if props is not None:
        style_el = props.find(f"{_W}pStyle")
        style_id = (style_el.get(f"{_W}val") or "") if style_el is not None else ""
        num = props.find(f"{_W}numPr")
        if num is not None:
            level_el = num.find(f"{_W}ilvl")
            level_val = level_el.get(f"{_W}val") if level_el is not None else None
            list_level = int(level_val) if level_val and level_val.isdigit() else 0
    style_name = styles.get(style_id, "")
    level = 0
    if style_name == "title" or style_id.lower() == "title":
        level = 1
    elif m := (_HEADING_NAME.match(style_name) or _HEADING_ID.match(style_id)):
        level = int(m.group(1))
    if level:
        return "h", "#" * level + " " + " ".join(text.split())
    if list_level is None and ("list" in style_name or style_id.lower().startswith("list")):
        list_level = 0
    if list_level is not None:
        return "li", "  " * min(list_level, 8) + "- " + " ".join(text.split())
    return "p", text


def _run_text(p: ET.Element) -> str:
    parts: list[str] = []
    for el in p.iter():
        if el.tag == f"{_W}t" and el.text:
            parts.append(el.text)
        elif el.tag == f"{_W}tab":
            parts.append("\t")
        elif el.tag in (f"{_W}br", f"{_W}cr"):
            parts.append("\n")
    return "".join(parts).replace("\x00", "")
