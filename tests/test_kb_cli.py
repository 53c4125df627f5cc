"""`gengate kb` as an operator uses it, on SQLite and on PostgreSQL: versions, history, rechunking, searching as a
given caller, and bad input refused with clear messages while the rest of the batch lands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from conftest import require
from gengate.cli.main import main
from rag_corpus import SALARY_MARKER, write_corpus


@pytest.fixture(params=["sqlite", "postgresql", "pgvector"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    storage: dict[str, str] = {"data_dir": str(tmp_path / "data")}
    settings: dict[str, object] = {"storage": storage, "telemetry": {"log_level": "WARNING"}}
    if request.param != "sqlite":
        storage["url"] = request.getfixturevalue("pg_url")
    if request.param == "pgvector":
        settings["rag"] = {"vector_backend": "pgvector"}
    path = tmp_path / "gengate.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def kb(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["kb", *args, "--config", str(config)], catch_exceptions=False)


def test_ingest_versions_history_and_search_as_a_caller(config: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    assert kb(config, "create", "handbook", "--strategy", "structure", "--size", "600").exit_code == 0
    first = kb(config, "ingest", "handbook", str(corpus), "--json")
    assert first.exit_code == 0, first.output
    report = json.loads(first.output[first.output.index("{") :])
    assert len(report["added"]) == 4 and report["problems"] == []

    again = json.loads(kb(config, "ingest", "handbook", str(corpus), "--json").stdout)
    assert again["unchanged"] == 4 and again["added"] == again["changed"] == []

    leave = corpus / "handbook" / "leave.md"
    leave.write_text(leave.read_text().replace("25 days", "30 days"))
    (corpus / "handbook" / "expenses.md").unlink()
    changed = json.loads(kb(config, "ingest", "handbook", str(corpus), "--json").stdout)
    assert changed["changed"] == ["handbook/leave.md"] and changed["retired"] == ["handbook/expenses.md"]

    shown = kb(config, "show", "handbook").output
    assert "handbook/leave.md  v2" in shown and "handbook/expenses.md" not in shown
    history = kb(config, "history", "handbook", "--document", "handbook/leave.md").output.splitlines()
    assert [line.split()[2] for line in history] == ["changed", "added"]

    staff = kb(config, "search", "handbook", "CEO salary", "--as-group", "staff").output
    assert SALARY_MARKER not in staff
    hr = kb(config, "search", "handbook", "CEO salary", "--as-group", "hr").output
    assert "hr/salaries.md" in hr.splitlines()[0]
    denied = kb(config, "search", "handbook", "CEO salary")
    assert denied.exit_code != 0 and "denies by default" in denied.output

    listed = kb(config, "list").output
    assert "handbook" in listed and " 3 " in listed


def test_rechunk_rebuilds_from_stored_text_and_keeps_versions(config: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    kb(config, "create", "handbook", "--strategy", "fixed", "--size", "200", "--overlap", "50")
    kb(config, "ingest", "handbook", str(corpus))
    before = kb(config, "list").output
    for path in corpus.rglob("*.md"):
        path.unlink()  # rechunking needs no source files
    result = kb(config, "rechunk", "handbook", "--strategy", "sentence_window", "--window", "1")
    assert result.exit_code == 0, result.output
    assert "4 documents" in result.output
    after = kb(config, "list").output
    assert "sentence_window" in after and before != after
    assert "v1" in kb(config, "show", "handbook").output
    hit = kb(config, "search", "handbook", "carried over to the next year", "--as-group", "staff").output
    assert "handbook/leave.md" in hit.splitlines()[0]
    assert "rechunked" in kb(config, "history", "handbook").output


def test_broken_and_unlisted_files_are_reported_while_the_rest_lands(config: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf")
    (corpus / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (corpus / "no-acl.md").write_text("# Notes\n\nNobody said who may read this.\n")
    kb(config, "create", "handbook")
    result = kb(config, "ingest", "handbook", str(corpus))
    assert result.exit_code == 0
    assert "4 added" in result.output
    for name in ("broken.pdf", "latin1.txt", "no-acl.md"):
        assert f"skipped {name}" in result.output
    assert "no access list" in result.output
    refused = [line for line in kb(config, "history", "handbook").output.splitlines() if " refused " in line]
    assert len(refused) == 3


def test_default_access_admits_documents_without_a_list(config: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "notes"
    corpus.mkdir()
    (corpus / "a.md").write_text("# Canteen\n\nThe canteen opens at noon.\n")
    kb(config, "create", "notes", "--default-group", "everyone")
    assert "1 added" in kb(config, "ingest", "notes", str(corpus)).output
    assert "notes/a.md" not in kb(config, "show", "notes").output  # ids are relative to the folder
    assert "a.md  v1" in kb(config, "show", "notes").output
    assert "group:everyone" in kb(config, "show", "notes").output


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("documents:\n  ../../etc/passwd: {groups: [x]}\n", ".."),
        ("documents:\n  /abs/path.md: {groups: [x]}\n", "relative"),
        ("documents: [unclosed\n", "line"),
        ("documents:\n  a.md: {groups: [x], owner: me}\n", "owner"),
    ],
)
def test_malformed_manifests_are_refused_before_anything_lands(
    config: Path, tmp_path: Path, manifest: str, message: str
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    path = tmp_path / "manifest.yaml"
    path.write_text(manifest)
    kb(config, "create", "handbook")
    result = CliRunner().invoke(main, ["kb", "ingest", "handbook", str(corpus), "--manifest", str(path),
                                       "--config", str(config)])  # fmt: skip
    assert result.exit_code != 0
    assert message in result.output
    assert " 0 " in kb(config, "list").output


def test_symlink_out_of_the_folder_is_refused(config: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    secret = tmp_path / "outside.md"
    secret.write_text("---\naccess: {groups: [staff]}\n---\n# Outside\n\nroot password is hunter2\n")
    (corpus / "link.md").symlink_to(secret)
    kb(config, "create", "handbook")
    result = kb(config, "ingest", "handbook", str(corpus))
    assert "skipped link.md" in result.output and "outside" in result.output
    assert "hunter2" not in kb(config, "search", "handbook", "root password", "--as-group", "staff").output


def test_unknown_knowledge_base_and_duplicate_names_are_clear_errors(config: Path, tmp_path: Path) -> None:
    missing = kb(config, "ingest", "nope", str(tmp_path))
    assert missing.exit_code != 0 and "knowledge base 'nope' does not exist" in missing.output
    assert kb(config, "create", "dup").exit_code == 0
    again = kb(config, "create", "dup")
    assert again.exit_code != 0 and "already exists" in again.output
    bad = kb(config, "create", "../etc")
    assert bad.exit_code != 0 and "letters, digits" in bad.output
    chunking = kb(config, "create", "x", "--strategy", "fixed", "--size", "100", "--overlap", "200")
    assert chunking.exit_code != 0 and "invalid chunking" in chunking.output
    assert kb(config, "delete", "dup", "--yes").exit_code == 0
    assert "dup" not in kb(config, "list").output


def test_sentence_vectors_are_kept_and_used_for_ranking(config: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    created = kb(config, "create", "handbook", "--sentence-vectors")
    assert created.exit_code == 0
    if "embeddings: none" in created.output:
        require("the MiniLM model", "sentence vectors need it")
    assert "sentence vectors" in kb(config, "show", "handbook").output
    assert "4 added" in kb(config, "ingest", "handbook", str(corpus)).output
    hit = kb(config, "search", "handbook", "how much is the chief executive paid", "--as-group", "hr").output
    assert "hr/salaries.md" in hit.splitlines()[0]
    staff = kb(config, "search", "handbook", "how much is the chief executive paid", "--as-group", "staff").output
    assert SALARY_MARKER not in staff and "hr/salaries.md" not in staff
