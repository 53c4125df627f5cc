"""The front half of knowledge-base ingestion: extracting files and scanning a source folder.

Every file here is real: PDFs are hand-assembled (a Type1 font text stream, correct xref offsets), DOCX files are
real zip archives with a hand-written document.xml, and hostile files (zip bombs, DOCTYPE entities, invalid UTF-8)
are built at run time in tmp_path. One test reads a real 10-Q from the shared dataset folder when it is present.
"""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from conftest import require
from gengate.rag.extract import Extracted, ExtractError, extract_file
from gengate.rag.sources import (
    NO_ACCESS_MESSAGE,
    OUTSIDE_MESSAGE,
    ManifestError,
    ScanResult,
    SourceDoc,
    load_manifest,
    scan_source,
)
from gengate.rag.types import AccessList

DOCUGAMI = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "docugami-sec10q" / "docs"
W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


# -- builders ------------------------------------------------------------------------------------------------------


def make_pdf(pages: list[list[str]], *, title: str | None = None) -> bytes:
    """A minimal valid PDF: one Helvetica text stream per page, exact xref offsets, optional /Info title."""
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (" ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages))).encode(), len(pages)),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, lines in enumerate(pages):
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
        for line in lines:
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({escaped}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (5 + 2 * i)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    info = ""
    if title is not None:
        objects.append(b"<< /Title (%s) >>" % title.encode("latin-1"))
        info = f" /Info {len(objects)} 0 R"
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def encrypt_pdf(pdf: bytes, *, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def para(text: str, *, style: str | None = None, list_level: int | None = None) -> str:
    props = ""
    if style is not None:
        props += f'<w:pStyle w:val="{style}"/>'
    if list_level is not None:
        props += f'<w:numPr><w:ilvl w:val="{list_level}"/><w:numId w:val="1"/></w:numPr>'
    ppr = f"<w:pPr>{props}</w:pPr>" if props else ""
    return f'<w:p>{ppr}<w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>'


def table(rows: list[list[str]]) -> str:
    body = "".join("<w:tr>" + "".join(f"<w:tc>{para(cell)}</w:tc>" for cell in row) + "</w:tr>" for row in rows)
    return f"<w:tbl>{body}</w:tbl>"


def document_xml(body: str, *, prolog: str = "") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>{prolog}'
        f'<w:document xmlns:w="{W_NS}"><w:body>{body}</w:body></w:document>'
    ).encode()


def make_docx(document: bytes, *, core_title: str | None = None, styles: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0" encoding="UTF-8"?><Types '
            'xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>',
        )
        archive.writestr("word/document.xml", document)
        if styles is not None:
            archive.writestr("word/styles.xml", styles)
        if core_title is not None:
            archive.writestr(
                "docProps/core.xml",
                '<?xml version="1.0" encoding="UTF-8"?><cp:coreProperties '
                'xmlns:cp="http://schemas.openxmlformats.org/package/2006/metadata/core-properties" '
                f'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>{core_title}</dc:title></cp:coreProperties>',
            )
    return buffer.getvalue()


def zip_of_zeros(path: Path, megabytes: int, *, level: int = 9) -> None:
    """A DOCX whose document.xml is `megabytes` MB of zeros, streamed so the test never holds it in memory."""
    chunk = b"\0" * (1024 * 1024)
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive,
        archive.open("word/document.xml", "w") as member,
    ):
        for _ in range(megabytes):
            member.write(chunk)


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


SAMPLE_HTML = """<!DOCTYPE html>
<html><head><title>Quarterly &amp; Annual</title>
<style>.x { color: red }</style><script>var s = "<p>hidden script</p>";</script></head>
<body><nav><a href="/">Home</a> <a href="/menu">Menu item</a></nav>
<h2>Revenue   by region</h2>
<p>Sales grew   in <b>Europe</b> &mdash; and Asia.</p>
<ul><li>First point</li><li>Second <em>point</em></li></ul>
<table><tr><th>Region</th><th>Amount</th></tr>
<tr><td>EU</td><td>1,000</td></tr></table>
<noscript>Please enable JavaScript</noscript>
</body></html>
"""

SAMPLE_DOCX_BODY = (
    para("Annual Report", style="Title")
    + para("Results", style="Heading2")
    + para("Revenue grew strongly.")
    + para("Alpha", list_level=0)
    + para("Beta", list_level=1)
    + table([["Quarter", "Revenue"], ["Q1", "10"]])
)


# -- extraction: formats ---------------------------------------------------------------------------------------------

FORMAT_CASES = [
    pytest.param(
        "policy.md",
        "---\ntitle: Leave policy\ntags: [hr]\n---\n# Heading one\n\nBody text.\n",
        "markdown",
        "Leave policy",
        "# Heading one\n\nBody text.",
        id="markdown-front-matter-title",
    ),
    pytest.param(
        "notes.MARKDOWN",
        "Intro line\n\n# The Real Title\n\n- a\n- b\n",
        "markdown",
        "The Real Title",
        "Intro line\n\n# The Real Title\n\n- a\n- b",
        id="markdown-first-heading-title",
    ),
    pytest.param(
        "readme.txt", "plain words\r\nsecond line\r\n", "text", "readme", "plain words\nsecond line", id="text-stem"
    ),
    pytest.param(
        "page.html",
        SAMPLE_HTML,
        "html",
        "Quarterly & Annual",
        "## Revenue by region\n\nSales grew in Europe — and Asia.\n\n- First point\n- Second point\n\n"
        "Region | Amount\nEU | 1,000",
        id="html-structure",
    ),
    pytest.param(
        "report.pdf",
        make_pdf([["Revenue rose 12%", "(unaudited)"], ["Page two text"]], title="Q3 Report"),
        "pdf",
        "Q3 Report",
        None,
        id="pdf-metadata-title",
    ),
    pytest.param(
        "annual.docx",
        make_docx(document_xml(SAMPLE_DOCX_BODY), core_title="Core Title"),
        "docx",
        "Annual Report",
        "# Annual Report\n\n## Results\n\nRevenue grew strongly.\n\n- Alpha\n  - Beta\n\nQuarter | Revenue\nQ1 | 10",
        id="docx-structure",
    ),
    pytest.param(
        "memo.docx",
        make_docx(document_xml(para("Just a memo.")), core_title="Core Title"),
        "docx",
        "Core Title",
        "Just a memo.",
        id="docx-core-title",
    ),
]


@pytest.mark.parametrize(("name", "content", "fmt", "title", "text"), FORMAT_CASES)
def test_extracts_title_and_structured_text_per_format(
    tmp_path: Path, name: str, content: str | bytes, fmt: str, title: str, text: str | None
) -> None:
    got = extract_file(write(tmp_path / name, content))
    assert (got.format, got.title) == (fmt, title)
    if text is not None:
        assert got.text == text


def test_pdf_pages_are_joined_by_blank_lines(tmp_path: Path) -> None:
    pdf = make_pdf([["Revenue rose 12%", "(unaudited)"], ["Page two text"]])
    got = extract_file(write(tmp_path / "two-pages.pdf", pdf))
    first, second = got.text.split("\n\n")
    assert "Revenue rose 12%" in first and "(unaudited)" in first
    assert second == "Page two text"
    assert got.title == "two-pages"


def test_pdf_metadata_title_without_letters_falls_back_to_the_file_stem(tmp_path: Path) -> None:
    pdf = make_pdf([["Body"]], title="0000320193-23-000064")
    assert extract_file(write(tmp_path / "2023 Q2 AAPL.pdf", pdf)).title == "2023 Q2 AAPL"


def test_pdf_encrypted_only_for_permissions_opens_with_the_empty_password(tmp_path: Path) -> None:
    pdf = encrypt_pdf(make_pdf([["Permissions only"]]), user_password="")
    got = extract_file(write(tmp_path / "perms.pdf", pdf))
    assert got.text == "Permissions only"


def test_markdown_front_matter_is_parsed_and_removed_from_text(tmp_path: Path) -> None:
    md = "---\ntitle: Leave policy\naccess:\n  groups: [hr, staff]\nreviewed: 2024-05-01\n---\nBody.\n"
    got = extract_file(write(tmp_path / "leave.md", md))
    assert got.front_matter["access"] == {"groups": ["hr", "staff"]}
    assert "reviewed" in got.front_matter
    assert got.text == "Body."


def test_docx_heading_styles_are_found_through_styles_xml_names(tmp_path: Path) -> None:
    """Localised Word versions write style ids like `berschrift1`; the style *name* stays `heading 1`."""
    styles = (
        f'<?xml version="1.0" encoding="UTF-8"?><w:styles xmlns:w="{W_NS}">'
        '<w:style w:styleId="berschrift1"><w:name w:val="heading 1"/></w:style></w:styles>'
    ).encode()
    docx = make_docx(document_xml(para("Überblick", style="berschrift1") + para("Text.")), styles=styles)
    got = extract_file(write(tmp_path / "de.docx", docx))
    assert got.text == "# Überblick\n\nText."
    assert got.title == "Überblick"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param("\ufeff# Titel\n\nGrüße".encode(), id="utf-8-bom"),
        pytest.param("# Titel\n\nGrüße".encode("utf-16"), id="utf-16-bom"),
    ],
)
def test_accepts_utf8_with_bom_and_utf16_with_bom(tmp_path: Path, data: bytes) -> None:
    got = extract_file(write(tmp_path / "gruss.md", data))
    assert (got.title, got.text) == ("Titel", "# Titel\n\nGrüße")


# -- extraction: refusals --------------------------------------------------------------------------------------------

REFUSALS = [
    pytest.param("bad.txt", b"abc\xff\xfedef", "not valid UTF-8 (byte offset 3)", id="invalid-utf8"),
    pytest.param("latin1.md", "café".encode("latin-1"), "not valid UTF-8 (byte offset 3)", id="latin1"),
    pytest.param("blob.txt", b"text\x00\x01\x02more", "looks binary", id="nul-bytes"),
    pytest.param("tool.exe", b"MZ", "unsupported file type '.exe'", id="unsupported-suffix"),
    pytest.param("fm.md", "---\ntitle: [unclosed\n---\nbody\n", "malformed front matter", id="malformed-front-matter"),
    pytest.param("list.md", "---\n- a\n- b\n---\nbody\n", "front matter must be a mapping", id="front-matter-list"),
    pytest.param("empty.md", "---\ntitle: only\n---\n\n", "no extractable text", id="empty-markdown"),
    pytest.param("broken.pdf", b"%PDF-1.4\nthis is not really a pdf", "not a readable PDF", id="broken-pdf"),
    pytest.param("scan.pdf", make_pdf([[]]), "no extractable text", id="pdf-without-text"),
    pytest.param(
        "locked.pdf",
        encrypt_pdf(make_pdf([["secret"]]), user_password="s3cret"),
        "encrypted PDF that needs a password",
        id="encrypted-pdf",
    ),
    pytest.param("nozip.docx", b"PK but not a zip", "not a valid DOCX", id="docx-not-zip"),
    pytest.param(
        "laughs.docx",
        make_docx(
            document_xml(para("&lol9;"), prolog='<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol9 "&lol;&lol;">]>')
        ),
        "DOCTYPE or ENTITY declaration",
        id="docx-doctype-entities",
    ),
    pytest.param(
        "utf16.docx",
        make_docx('<?xml version="1.0" encoding="UTF-16"?><w:document/>'.encode("utf-16")),
        "not UTF-8 XML",
        id="docx-utf16-xml",
    ),
]


@pytest.mark.parametrize(("name", "data", "message"), REFUSALS)
def test_refuses_bad_files_with_a_clear_message_naming_the_file(
    tmp_path: Path, name: str, data: bytes | str, message: str
) -> None:
    path = write(tmp_path / name, data)
    with pytest.raises(ExtractError) as caught:
        extract_file(path)
    assert message in caught.value.message
    assert name in caught.value.message
    assert str(tmp_path) not in caught.value.message


def test_oversize_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    with path.open("wb") as fh:
        fh.truncate(60 * 1024 * 1024)  # sparse: 60 MB on paper, nothing on disk
    tracemalloc.start()
    try:
        with pytest.raises(ExtractError) as caught:
            extract_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.message == "huge.txt is 62,914,560 bytes, larger than the 52,428,800-byte limit"
    assert peak < 1024 * 1024


def test_docx_without_document_xml_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(ExtractError, match=r"no word/document\.xml"):
        extract_file(write(tmp_path / "odd.docx", buffer.getvalue()))


def test_zip_bomb_docx_is_refused_without_inflating_it(tmp_path: Path) -> None:
    path = tmp_path / "bomb.docx"
    zip_of_zeros(path, 200, level=1)  # level 1 builds 3x faster; still ~230:1
    assert path.stat().st_size < 2 * 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(ExtractError, match="uncompressed") as caught:
            extract_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "bomb.docx" in caught.value.message
    assert peak < 20 * 1024 * 1024  # the 200 MB entry was never inflated


def test_docx_with_extreme_compression_ratio_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ratio.docx"
    zip_of_zeros(path, 20)  # under the total cap, but ~1000:1
    with pytest.raises(ExtractError, match="compression ratio"):
        extract_file(path)


def test_docx_with_too_many_entries_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "many.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("word/document.xml", document_xml(para("x")))
        for i in range(10_000):
            archive.writestr(f"junk/{i}", b"")
    with pytest.raises(ExtractError, match="10,001 zip entries"):
        extract_file(path)


# -- sources: access lists -------------------------------------------------------------------------------------------


def by_id(result: ScanResult) -> dict[str, SourceDoc]:
    return {doc.doc_id: doc for doc in result.documents}


def problems(result: ScanResult) -> dict[str, str]:
    return {p.doc_id: p.message for p in result.problems}


def write_manifest(path: Path, data: object) -> Path:
    return write(path, json.dumps(data))


def test_front_matter_access_list_is_used(tmp_path: Path) -> None:
    write(tmp_path / "kb" / "a.md", "---\naccess:\n  groups: [hr]\n  users: [alice]\nteams: [people]\n---\nA.\n")
    doc = by_id(scan_source(tmp_path / "kb"))["a.md"]
    assert doc.access == AccessList(users=("alice",), groups=("hr",), teams=("people",))


LAYERS = ("cli", "front_matter", "manifest_entry", "manifest_default", "kb_default")


@pytest.mark.parametrize(
    ("present", "winner"),
    [
        (LAYERS, "cli"),
        (LAYERS[1:], "front_matter"),
        (LAYERS[2:], "manifest_entry"),
        (LAYERS[3:], "manifest_default"),
        (LAYERS[4:], "kb_default"),
        (("cli", "kb_default"), "cli"),
        (("front_matter", "manifest_default"), "front_matter"),
    ],
)
def test_access_precedence_is_cli_then_front_matter_then_manifest_then_kb_default(
    tmp_path: Path, present: tuple[str, ...], winner: str
) -> None:
    front = "---\ngroups: [front_matter]\n---\n" if "front_matter" in present else ""
    write(tmp_path / "kb" / "doc.md", front + "Body.\n")
    manifest: dict[str, object] = {"documents": {}}
    if "manifest_entry" in present:
        manifest["documents"] = {"doc.md": {"groups": ["manifest_entry"]}}
    if "manifest_default" in present:
        manifest["default"] = {"groups": ["manifest_default"]}
    result = scan_source(
        tmp_path / "kb",
        manifest=write_manifest(tmp_path / "manifest.json", manifest),
        access=AccessList(groups=("cli",)) if "cli" in present else None,
        default_access=AccessList(groups=("kb_default",)) if "kb_default" in present else None,
    )
    assert by_id(result)["doc.md"].access == AccessList(groups=(winner,))


def test_document_without_any_access_list_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "kb" / "open.md", "Nobody said who may read this.\n")
    write(tmp_path / "kb" / "closed.md", "---\ngroups: []\n---\nAn empty list grants nobody.\n")
    result = scan_source(tmp_path / "kb", access=AccessList())
    assert result.documents == []
    assert problems(result) == {"open.md": NO_ACCESS_MESSAGE, "closed.md": NO_ACCESS_MESSAGE}


def test_invalid_front_matter_access_is_a_problem_for_that_document_only(tmp_path: Path) -> None:
    write(tmp_path / "kb" / "bad.md", "---\ngroups: finance\n---\nA.\n")
    write(tmp_path / "kb" / "good.md", "---\ngroups: [finance]\n---\nB.\n")
    result = scan_source(tmp_path / "kb")
    assert list(by_id(result)) == ["good.md"]
    assert "must be a list of names" in problems(result)["bad.md"]


@pytest.mark.parametrize(
    ("doc_id", "expected"),
    [
        ("finance/q3.md", AccessList(users=("cfo",))),  # the exact path beats every glob
        ("finance/q2.md", AccessList(groups=("finance",))),  # "finance/*.md" is longer than "*.md"
        ("finance/plan.txt", AccessList(groups=("finance-all",))),
        ("general.md", AccessList(groups=("staff",))),
        ("other.txt", AccessList(teams=("everyone",))),  # no entry matches: the manifest default
    ],
)
def test_manifest_most_specific_pattern_wins(tmp_path: Path, doc_id: str, expected: AccessList) -> None:
    for name in ("finance/q3.md", "finance/q2.md", "finance/plan.txt", "general.md", "other.txt"):
        write(tmp_path / "kb" / name, f"Text of {name}.\n")
    manifest = {
        "default": {"teams": ["everyone"]},
        "documents": {
            "*.md": {"groups": ["staff"]},
            "finance/*": {"groups": ["finance-all"]},
            "finance/*.md": {"groups": ["finance"]},
            "finance/q3.md": {"users": ["cfo"]},
        },
    }
    result = scan_source(tmp_path / "kb", manifest=write_manifest(tmp_path / "m.json", manifest))
    assert by_id(result)[doc_id].access == expected


def test_manifest_title_and_metadata_are_applied(tmp_path: Path) -> None:
    write(tmp_path / "kb" / "q3.pdf", make_pdf([["Quarterly numbers"]]))
    write(tmp_path / "kb" / "fm.md", "---\ntitle: From front matter\n---\nBody.\n")
    manifest_yaml = """
documents:
  q3.pdf: {groups: [finance], title: Q3 results, metadata: {quarter: Q3, year: 2023, path: ignored}}
  fm.md: {groups: [finance], title: Loses to front matter}
"""
    result = scan_source(tmp_path / "kb", manifest=write(tmp_path / "manifest.yaml", manifest_yaml))
    docs = by_id(result)
    assert docs["q3.pdf"].title == "Q3 results"
    assert docs["q3.pdf"].metadata == {"quarter": "Q3", "year": "2023", "path": "q3.pdf", "format": "pdf"}
    assert docs["fm.md"].title == "From front matter"
    assert docs["q3.pdf"].size_bytes == (tmp_path / "kb" / "q3.pdf").stat().st_size


# -- sources: manifest validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ({"documents": {"../x.md": {"groups": ["a"]}}}, "must not contain '..'"),
        ({"documents": {"docs/../../x.md": {"groups": ["a"]}}}, "must not contain '..'"),
        ({"documents": {"/etc/passwd": {"groups": ["a"]}}}, "must be relative"),
        ({"defaults": {}}, "unknown key 'defaults'"),
        ({"documents": {"a.md": {"group": ["a"]}}}, "unknown key 'group'"),
        ({"documents": {"a.md": {"groups": "finance"}}}, "groups must be a list of names"),
        ({"documents": {"a.md": {"groups": ["has space"]}}}, "invalid name 'has space'"),
        ({"documents": {"a.md": {"users": ["user:bob"]}}}, "invalid name 'user:bob'"),
        ({"documents": {"a.md": {"teams": [""]}}}, "invalid name ''"),
        ({"documents": {"a.md": {"title": 3}}}, "title must be a string"),
        ({"documents": {"a.md": {"metadata": {"k": ["v"]}}}}, "metadata.k must be a string or number"),
        ({"documents": ["a.md"]}, "'documents' must be a mapping"),
        ({"default": {"groups": [1]}}, "'default'.groups has an invalid name 1"),
    ],
)
def test_invalid_manifest_is_refused_naming_the_key(tmp_path: Path, manifest: object, message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifest(write_manifest(tmp_path / "manifest.json", manifest))
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("m.yaml", "documents:\n  a.md: {groups: [a]\n  b.md: x\n", "invalid YAML at line"),
        ("m.yml", "documents:\n\t- a\n", "invalid YAML at line 2"),
        ("m.json", '{"documents": {"a.md": }}', "invalid JSON at line 1, column 24"),
    ],
)
def test_malformed_manifest_is_refused_with_the_parser_position(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    write(tmp_path / "kb" / "a.md", "A.\n")
    with pytest.raises(ManifestError) as caught:
        scan_source(tmp_path / "kb", manifest=write(tmp_path / name, content))
    assert message in caught.value.message
    assert name in caught.value.message


# -- sources: walking ------------------------------------------------------------------------------------------------


def test_broken_pdf_is_reported_and_the_rest_of_the_batch_is_returned(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    write(kb / "a.md", "# A\n\nAlpha.\n")
    write(kb / "b-broken.pdf", b"%PDF-1.7\n garbage garbage")
    write(kb / "c.pdf", make_pdf([["Gamma revenue"]]))
    write(kb / "d.html", "<h1>Delta</h1><p>Delta body</p>")
    write(kb / "e.txt", b"\xff\xfe\xfd not utf-8 and no BOM" + b"\x00")
    result = scan_source(kb, access=AccessList(groups=("all",)))
    assert sorted(by_id(result)) == ["a.md", "c.pdf", "d.html"]
    assert set(problems(result)) == {"b-broken.pdf", "e.txt"}
    assert "not a readable PDF" in problems(result)["b-broken.pdf"]


def test_walk_is_recursive_sorted_and_skips_hidden_and_unsupported_files(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    for name in ("z.md", "a/b/deep.txt", "a/first.md", "m.TXT"):
        write(kb / name, f"{name} text\n")
    write(kb / ".hidden.md", "secret\n")
    write(kb / ".git" / "config.md", "nope\n")
    write(kb / "image.png", b"\x89PNG")
    write(kb / "data.csv", "a,b\n")
    result = scan_source(kb, access=AccessList(groups=("all",)))
    assert [d.doc_id for d in result.documents] == ["a/b/deep.txt", "a/first.md", "m.TXT", "z.md"]
    assert sorted(result.skipped) == [".git/", ".hidden.md", "data.csv", "image.png"]
    assert result.problems == []


def test_include_patterns_narrow_the_scan(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    for name in ("a.md", "b.txt", "sub/c.md"):
        write(kb / name, "text\n")
    result = scan_source(kb, include=["*.md"], access=AccessList(groups=("all",)))
    assert [d.doc_id for d in result.documents] == ["a.md", "sub/c.md"]
    assert result.skipped == ["b.txt"]


def test_symlink_outside_the_source_folder_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "outside" / "secret.md", "Salaries.\n")
    kb = tmp_path / "kb"
    write(kb / "ok.md", "Fine.\n")
    (kb / "leak.md").symlink_to(tmp_path / "outside" / "secret.md")
    result = scan_source(kb, access=AccessList(groups=("all",)))
    assert list(by_id(result)) == ["ok.md"]
    assert problems(result) == {"leak.md": OUTSIDE_MESSAGE}


def test_symlink_inside_the_source_folder_is_followed(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    write(kb / "docs" / "real.md", "# Real\n\nContent.\n")
    (kb / "alias.md").symlink_to(kb / "docs" / "real.md")
    result = scan_source(kb, access=AccessList(groups=("all",)))
    docs = by_id(result)
    assert sorted(docs) == ["alias.md", "docs/real.md"]
    assert docs["alias.md"].content_hash == docs["docs/real.md"].content_hash


def test_symlinked_folders_are_never_followed(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    write(kb / "a.md", "A.\n")
    (kb / "loop").symlink_to(kb, target_is_directory=True)
    result = scan_source(kb, access=AccessList(groups=("all",)))
    assert list(by_id(result)) == ["a.md"]
    assert result.skipped == ["loop/"]


def test_single_file_root_uses_its_name_as_doc_id(tmp_path: Path) -> None:
    path = write(tmp_path / "deep" / "handbook.md", "# Handbook\n\nRules.\n")
    result = scan_source(path, default_access=AccessList(groups=("staff",)))
    [doc] = result.documents
    assert (doc.doc_id, doc.title, doc.metadata) == (
        "handbook.md",
        "Handbook",
        {"path": "handbook.md", "format": "markdown"},
    )


def test_oversize_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    write(tmp_path / "kb" / "big.txt", "x" * 5000)
    write(tmp_path / "kb" / "small.txt", "x")
    result = scan_source(tmp_path / "kb", access=AccessList(groups=("a",)), max_file_bytes=100)
    assert list(by_id(result)) == ["small.txt"]
    assert "larger than the 100-byte limit" in problems(result)["big.txt"]


def test_progress_is_reported_after_every_file(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    for name in ("a.md", "b.pdf", "c.txt"):
        write(kb / name, "text\n")  # b.pdf is broken: progress still counts it
    calls: list[tuple[int, int, str]] = []
    scan_source(kb, access=AccessList(groups=("a",)), progress=lambda *args: calls.append(args))
    assert calls == [(1, 3, "a.md"), (2, 3, "b.pdf"), (3, 3, "c.txt")]


def test_missing_root_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        scan_source(tmp_path / "nope")


def test_content_hash_is_stable_across_runs_and_changes_with_content(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    write(kb / "a.md", "# A\n\nVersion one.\n")
    write(kb / "b.docx", make_docx(document_xml(para("Stable"))))

    def scan() -> dict[str, SourceDoc]:
        return by_id(scan_source(kb, access=AccessList(groups=("g",))))

    first, second = scan(), scan()
    assert {k: d.content_hash for k, d in first.items()} == {k: d.content_hash for k, d in second.items()}
    assert len(first["a.md"].content_hash) == 64
    write(kb / "a.md", "# A\n\nVersion two.\n")
    third = scan()
    assert third["a.md"].content_hash != first["a.md"].content_hash
    assert third["b.docx"].content_hash == first["b.docx"].content_hash


# -- a real document ---------------------------------------------------------------------------------------------------


def test_extracts_a_real_10q_pdf_from_the_shared_dataset() -> None:
    if not DOCUGAMI.is_dir():
        require("the docugami-sec10q dataset", "shared/datasets/docugami-sec10q is not beside the repository")
    pdfs = sorted(DOCUGAMI.glob("*.pdf"), key=lambda p: p.stat().st_size)
    if not pdfs:
        require("the docugami-sec10q PDFs", "no PDFs in the dataset folder")
    got: Extracted = extract_file(pdfs[0])
    assert got.format == "pdf"
    assert len(got.text) > 10_000
    lowered = got.text.lower()
    assert "apple" in lowered or "revenue" in lowered
