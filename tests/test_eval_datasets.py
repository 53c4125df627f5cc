"""Evaluation datasets: parsing JSONL/CSV/YAML, row-level errors by line, content hashing, versions and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from gengate.cli.main import main
from gengate.eval.datasets import (
    MAX_FILE_BYTES,
    Case,
    DatasetError,
    Identity,
    content_hash,
    diff,
    parse_dataset,
)

LEAVE = {"id": "leave", "question": "How many days of leave?", "reference": "25 days", "required_facts": ["25 days"],
         "gold_ids": ["handbook/leave.md"], "tags": ["hr", "easy"]}  # fmt: skip
SALARY = {"id": "salary", "question": "What is the CEO paid?", "expected_outcome": "no_answer",
          "identity": {"subject": "bob", "team": "eng", "groups": ["staff"]}}  # fmt: skip
CHAT = {"id": "chat", "messages": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Expenses limit?"}]}  # fmt: skip

CSV_TEXT = (
    "id,question,reference,required_facts,gold_ids,tags,user,team,groups,expected_outcome\n"
    "leave,How many days of leave?,25 days,25 days,handbook/leave.md,hr;easy,,,,\n"
    "salary,What is the CEO paid?,,,,,bob,eng,staff,no_answer\n"
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(*rows: Any) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


# -- parsing ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("cases.jsonl", jsonl(LEAVE, SALARY)),
        ("cases.json-lines", jsonl(LEAVE, SALARY)),
        ("cases.csv", CSV_TEXT),
        ("cases.yaml", yaml.safe_dump([LEAVE, SALARY])),
        ("cases.yml", yaml.safe_dump({"cases": [LEAVE, SALARY]})),
    ],
)
def test_each_format_parses_to_the_same_cases(tmp_path: Path, name: str, text: str) -> None:
    parsed = parse_dataset(write(tmp_path / name, text))
    assert parsed.errors == []
    leave, salary = parsed.cases
    assert leave == Case(
        case_id="leave", question="How many days of leave?", reference="25 days", required_facts=("25 days",),
        gold_ids=("handbook/leave.md",), tags=("hr", "easy"),
    )  # fmt: skip
    assert salary.identity == Identity(subject="bob", team="eng", groups=("staff",))
    assert salary.expected == {"outcome": "no_answer"}
    assert salary.reference is None and salary.required_facts == ()


def test_messages_identity_expected_and_metadata_are_kept(tmp_path: Path) -> None:
    row = {**CHAT, "identity": {"subject": "ann", "roles": ["auditor"]}, "expected": {"outcome": "answered",
           "template": "expenses"}, "metadata": {"priority": 1, "owner": "hr"}}  # fmt: skip
    (case,) = parse_dataset(write(tmp_path / "c.jsonl", jsonl(row))).cases
    assert case.question is None and case.messages == CHAT["messages"]
    assert case.identity == Identity(subject="ann", roles=("auditor",))
    assert case.expected == {"outcome": "answered", "template": "expenses"}
    assert case.metadata == {"priority": "1", "owner": "hr"}
    assert Case.from_dict(case.to_dict()) == case


def test_cases_without_an_id_get_a_stable_one_from_their_input(tmp_path: Path) -> None:
    first = parse_dataset(write(tmp_path / "a.jsonl", jsonl({"question": "Hi?"}, {"question": "Bye?"}))).cases
    again = parse_dataset(write(tmp_path / "b.csv", "question,tags\nBye?,x\nHi?,\n")).cases
    assert {c.case_id for c in first} == {c.case_id for c in again}
    assert len({c.case_id for c in first}) == 2


@pytest.mark.parametrize(
    ("name", "text", "errors", "valid"),
    [
        (
            "bad.jsonl",
            jsonl(
                LEAVE,
                "{not json",
                {"id": "q2"},
                "",
                {"id": "leave", "question": "again"},
                {"question": "x", "colour": "red"},
                {"question": 7},
                [1, 2],
                SALARY,
            ),
            [
                (2, "invalid JSON"),
                (3, "missing question"),
                (5, "duplicate id 'leave' (first on line 1)"),
                (6, "unknown key 'colour'"),
                (7, "question: expected a string"),
                (8, "expected an object"),
            ],
            ["leave", "salary"],
        ),
        (
            "bad.jsonl",
            jsonl(
                {"question": "q", "messages": CHAT["messages"]},
                {"messages": [{"role": "bot", "content": "hi"}]},
                {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
                {"question": "q", "tags": "hr"},
                {"question": "q", "expected_outcome": "maybe"},
                {"question": "q", "identity": {"team": "eng"}},
                {"question": "   "},
                {"question": "x" * 32_001},
                {"question": "q", "metadata": {"owner": None}},
            ),
            [
                (1, "not both"),
                (2, "messages[0].role"),
                (3, "last message must be a non-empty user turn"),
                (4, "tags: expected a list"),
                (5, "expected outcome must be one of answered, no_answer, blocked"),
                (6, "identity: a subject"),
                (7, "must not be empty"),
                (8, "over the 32000 limit"),
                (9, "metadata.owner: expected a string, number or boolean"),
            ],
            [],
        ),
        (
            "bad.csv",
            'id,question,tags\na,"A question\nover two lines",x\nb,,x\nc,too,many,fields\nd,Fine?,\n',
            [(4, "missing question"), (5, "expected 3 fields")],
            ["a", "d"],
        ),
        (
            "bad.yaml",
            "cases:\n  - id: a\n    question: Fine?\n  - id: b\n    question: Bad?\n    gold_ids: doc.md\n"
            "  - just a string\n  - {question: [1]}\n  - id: a\n    question: Again\n",
            [
                (6, "gold_ids: expected a list"),
                (7, "expected a mapping"),
                (8, "question: expected a string"),
                (9, "duplicate id 'a' (first on line 2)"),
            ],
            ["a"],
        ),
    ],
)
def test_invalid_rows_are_reported_by_line_and_valid_rows_still_parse(
    tmp_path: Path, name: str, text: str, errors: list[tuple[int, str]], valid: list[str]
) -> None:
    parsed = parse_dataset(write(tmp_path / name, text))
    assert [e.line for e in parsed.errors] == [line for line, _ in errors], parsed.errors
    for error, (_, message) in zip(parsed.errors, errors, strict=True):
        assert message in error.message
    assert [c.case_id for c in parsed.cases] == valid


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("cases.txt", b"question\nhi\n", "unknown dataset format '.txt'"),
        ("cases.jsonl", b'{"question": "caf\xe9"}\n', "not UTF-8 text (line 1)"),
        ("cases.yaml", b"cases:\n  - question: [unclosed\n", "invalid YAML: line 3"),
        ("cases.yaml", b"title: x\n", "expected a list of cases or a mapping with only 'cases', not 'title'"),
        ("cases.csv", b"question,answer\nhi,there\n", "unknown column 'answer'"),
        ("cases.csv", b"id,tags\na,x\n", "needs a 'question' column"),
    ],
)
def test_unreadable_files_raise_a_clear_error(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError) as raised:
        parse_dataset(path)
    assert message in raised.value.message and name in raised.value.message


def test_files_over_the_size_limit_are_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(DatasetError, match="over the 50 MB limit"):
        parse_dataset(path)


def test_content_hash_ignores_row_order_and_file_format(tmp_path: Path) -> None:
    hashes = {
        content_hash(parse_dataset(write(tmp_path / name, text)).cases)
        for name, text in [
            ("a.jsonl", jsonl(LEAVE, SALARY)),
            ("b.jsonl", jsonl(SALARY, LEAVE)),
            ("c.csv", CSV_TEXT),
            ("d.yaml", yaml.safe_dump({"cases": [SALARY, LEAVE]})),
        ]
    }
    assert len(hashes) == 1
    changed = parse_dataset(write(tmp_path / "e.jsonl", jsonl({**LEAVE, "reference": "30 days"}, SALARY))).cases
    assert content_hash(changed) not in hashes


def test_diff_reports_added_removed_and_changed_ids() -> None:
    old = [Case("a", question="A?"), Case("b", question="B?"), Case("c", question="C?")]
    new = [Case("a", question="A?"), Case("c", question="C?", tags=("new",)), Case("d", question="D?")]
    changes = diff(old, new)
    assert (changes.added, changes.removed, changes.changed) == (["d"], ["b"], ["c"])
    assert diff(new, list(reversed(new))).empty


# -- storage and CLI, on SQLite and PostgreSQL -----------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    storage: dict[str, str] = {"data_dir": str(tmp_path / "data")}
    if request.param == "postgresql":
        storage["url"] = request.getfixturevalue("pg_url")
    path = tmp_path / "gengate.yaml"
    path.write_text(yaml.safe_dump({"storage": storage, "telemetry": {"log_level": "WARNING"}}))
    return path


def dataset(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["dataset", *args, "--config", str(config)], catch_exceptions=False)


def test_import_versions_by_content_and_diffs_versions(config: Path, tmp_path: Path) -> None:
    first = write(tmp_path / "v1.jsonl", jsonl(LEAVE, SALARY, CHAT))
    result = dataset(config, "import", "hr-qa", str(first))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "hr-qa v1: 3 cases"

    same = write(tmp_path / "same.yaml", yaml.safe_dump([CHAT, SALARY, LEAVE]))
    again = dataset(config, "import", "hr-qa", str(same))
    assert again.exit_code == 0 and again.stdout.strip() == "hr-qa is unchanged (v1)"

    second = write(
        tmp_path / "v2.jsonl", jsonl({**LEAVE, "reference": "30 days"}, CHAT, {"id": "new", "question": "?"})
    )
    assert dataset(config, "import", "hr-qa", str(second)).stdout.strip() == "hr-qa v2: 3 cases"

    changes = dataset(config, "diff", "hr-qa", "1", "2").output.splitlines()
    assert changes == ["hr-qa v1 → v2: 1 added, 1 removed, 1 changed", "  + new", "  - salary", "  ~ leave"]

    listed = dataset(config, "list").output.splitlines()
    assert listed[1].split()[:4] == ["hr-qa", "v2", "3", listed[1].split()[3]] and listed[1].endswith("v2.jsonl")

    shown = json.loads(dataset(config, "show", "hr-qa", "--version", "1", "--json").stdout)
    assert shown["version"] == 1 and shown["source"] == "v1.jsonl" and shown["case_count"] == 3
    assert [Case.from_dict(c) for c in shown["cases"]] == parse_dataset(first).cases
    text = dataset(config, "show", "hr-qa", "--version", "1", "--limit", "2").output
    assert "salary  What is the CEO paid?  [as bob outcome=no_answer]" in text and "… 1 more" in text


def test_rejected_rows_are_listed_on_stderr_while_the_rest_import(config: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "mixed.csv", "id,question\na,First?\nb,\nc,Third?\n")
    result = dataset(config, "import", "mixed", str(path))
    assert result.exit_code == 0
    assert result.stdout.strip() == "mixed v1: 2 cases (1 rows rejected)"
    assert result.stderr.splitlines() == ["  line 3: missing question (give a question or messages)"]

    none = write(tmp_path / "none.jsonl", jsonl({"id": "x"}, "oops"))
    failed = dataset(config, "import", "other", str(none))
    assert failed.exit_code == 1 and "no valid cases" in failed.stderr and "  line 2: invalid JSON" in failed.stderr
    assert "other" not in dataset(config, "list").output


def test_unreadable_files_and_unknown_names_are_clear_cli_errors(config: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("cases: [\n")
    result = dataset(config, "import", "hr-qa", str(broken))
    assert result.exit_code == 1 and "broken.yaml: invalid YAML" in result.output
    assert dataset(config, "list").output.splitlines()[1:] == []

    bad_name = dataset(config, "import", "../etc", str(write(tmp_path / "ok.jsonl", jsonl(LEAVE))))
    assert bad_name.exit_code == 1 and "letters, digits" in bad_name.output

    missing = dataset(config, "show", "nope")
    assert missing.exit_code == 1 and "dataset 'nope' does not exist" in missing.output
    dataset(config, "import", "hr-qa", str(tmp_path / "ok.jsonl"))
    no_version = dataset(config, "diff", "hr-qa", "1", "7")
    assert no_version.exit_code == 1 and "dataset 'hr-qa' has no version 7" in no_version.output
