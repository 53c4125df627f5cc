"""Evaluation datasets: reading case files (JSONL, CSV, YAML), validating each case, hashing and diffing them.

A case is one question (or a chat transcript ending in a user turn) with what a good run looks like — a reference
answer, facts the answer must contain, the documents retrieval should find — and optionally who to run it as, so
access control is evaluated too. Files are validated row by row: a bad row is reported with its 1-based line and
the good rows still parse. Only a file that cannot be read as a whole (unknown suffix, not UTF-8, broken YAML,
too large) raises `DatasetError`.

A dataset's version is the sha256 of its cases in canonical form (sorted by id), so the same cases in another
order or another format hash the same.

Owns: `Case`, `Identity`, `parse_dataset`, `content_hash`, `diff` and dataset-name checks. Must not: touch the
store, run cases or score them; the only I/O is reading the one file it is given.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml

from gengate.errors import RequestError
from gengate.eval.metrics.base import GuardOutcome

__all__ = [
    "FORMATS",
    "MAX_FILE_BYTES",
    "MAX_TEXT_CHARS",
    "Case",
    "DatasetDiff",
    "DatasetError",
    "Identity",
    "ParsedDataset",
    "RowError",
    "check_name",
    "content_hash",
    "diff",
    "parse_dataset",
]

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_TEXT_CHARS = 32_000
MAX_ID_CHARS = 256
FORMATS: Mapping[str, str] = {
    ".jsonl": "jsonl", ".json-lines": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".yaml": "yaml", ".yml": "yaml",
}  # fmt: skip
ROLES = ("system", "user", "assistant")
OUTCOMES: tuple[str, ...] = get_args(GuardOutcome)

CASE_KEYS = (
    "id", "question", "messages", "reference", "required_facts", "gold_ids", "tags", "identity", "expected",
    "expected_outcome", "metadata",
)  # fmt: skip
IDENTITY_KEYS = ("subject", "team", "groups", "roles")
# CSV columns; `metadata.<key>` columns are also accepted and land in the case's metadata.
CSV_COLUMNS = (
    "id", "question", "reference", "required_facts", "gold_ids", "tags", "user", "team", "groups", "roles",
    "expected_outcome",
)  # fmt: skip
CSV_LISTS = ("required_facts", "gold_ids", "tags", "groups", "roles")


class DatasetError(RequestError):
    """A dataset file cannot be read at all (unknown suffix, not UTF-8, broken YAML, too large), or a bad name."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who to run a case as: the subject, their team, groups and roles (so access control is exercised)."""

    subject: str
    team: str | None = None
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The identity as JSON-able data (the same shape a case file uses)."""
        return {"subject": self.subject, "team": self.team, "groups": list(self.groups), "roles": list(self.roles)}


@dataclass(frozen=True, slots=True)
class Case:
    """One evaluation case, validated.

    Exactly one of `question` and `messages` is set; messages are `{"role", "content"}` dicts ending with a user
    turn. `expected` holds per-case expectations such as `{"outcome": "no_answer"}` for a case that must be refused.
    """

    case_id: str
    question: str | None = None
    messages: list[dict[str, str]] | None = field(default=None, hash=False)
    reference: str | None = None
    required_facts: tuple[str, ...] = ()
    gold_ids: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    identity: Identity | None = None
    expected: dict[str, str] = field(default_factory=dict, hash=False)
    metadata: dict[str, str] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """The case in canonical, JSON-able form (what is stored and hashed; `from_dict` reads it back)."""
        return {
            "id": self.case_id,
            "question": self.question,
            "messages": [dict(m) for m in self.messages] if self.messages is not None else None,
            "reference": self.reference,
            "required_facts": list(self.required_facts),
            "gold_ids": list(self.gold_ids),
            "tags": list(self.tags),
            "identity": self.identity.to_dict() if self.identity is not None else None,
            "expected": dict(sorted(self.expected.items())),
            "metadata": dict(sorted(self.metadata.items())),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Case:
        """Validate one case given as a mapping (a JSONL/YAML row or `to_dict` output); DatasetError if invalid."""
        try:
            return _case(raw)
        except _Invalid as exc:
            raise DatasetError(exc.message) from None


@dataclass(frozen=True, slots=True)
class RowError:
    """A rejected row: its 1-based line in the file and why."""

    line: int
    message: str


@dataclass(frozen=True, slots=True)
class ParsedDataset:
    """The valid cases of a file (in file order), the rejected rows, and the format that was read."""

    cases: list[Case]
    errors: list[RowError]
    format: str


@dataclass(frozen=True, slots=True)
class DatasetDiff:
    """Case ids added, removed and changed between two versions (each sorted)."""

    added: list[str]
    removed: list[str]
    changed: list[str]

    @property
    def empty(self) -> bool:
        """True when the two versions hold the same cases."""
        return not (self.added or self.removed or self.changed)


def check_name(name: str) -> str:
    """Return the dataset name if valid: letters, digits, '-', '_' and '.', at most 128; else DatasetError."""
    if not name or len(name) > 128 or not all(c.isalnum() or c in "-_." for c in name):
        raise DatasetError("dataset names are letters, digits, '-', '_' and '.' (at most 128)")
    return name


def parse_dataset(path: Path) -> ParsedDataset:
    """Read and validate a case file, chosen by suffix: .jsonl (.json-lines, .ndjson), .csv, .yaml (.yml)."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DatasetError(f"{path.name}: unknown dataset format {path.suffix or '(no suffix)'!r}; "
                           "use .jsonl, .csv or .yaml")  # fmt: skip
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise DatasetError(f"{path.name}: {size / 1e6:.1f} MB is over the {MAX_FILE_BYTES // 2**20} MB limit")
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path.name}: cannot read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(f"{path.name}: not UTF-8 text (line {line}); save it as UTF-8") from None
    readers = {"jsonl": _jsonl_rows, "csv": _csv_rows, "yaml": _yaml_rows}
    try:
        rows = list(readers[fmt](text))
    except DatasetError as exc:
        raise DatasetError(f"{path.name}: {exc.message}") from None
    cases, errors = _validate(rows)
    return ParsedDataset(cases=cases, errors=errors, format=fmt)


def content_hash(cases: Sequence[Case]) -> str:
    """sha256 over the canonical JSON of the cases sorted by id: independent of row order and file format."""
    body = [c.to_dict() for c in sorted(cases, key=lambda c: c.case_id)]
    return hashlib.sha256(_canonical(body).encode("utf-8")).hexdigest()


def diff(old: Sequence[Case], new: Sequence[Case]) -> DatasetDiff:
    """Which case ids were added, removed or changed going from `old` to `new`."""
    before = {c.case_id: c.to_dict() for c in old}
    after = {c.case_id: c.to_dict() for c in new}
    return DatasetDiff(
        added=sorted(after.keys() - before.keys()),
        removed=sorted(before.keys() - after.keys()),
        changed=sorted(k for k in before.keys() & after.keys() if before[k] != after[k]),
    )


# -- rows: what each format yields before validation ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    raw: Any = None
    error: str | None = None
    key_lines: Mapping[str, int] = field(default_factory=dict)  # YAML: the line of each key, for precise errors


def _jsonl_rows(text: str) -> Iterator[_Row]:
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            yield _Row(number, error=f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        except RecursionError:
            yield _Row(number, error="invalid JSON: nested too deeply")
            continue
        yield _Row(number, raw=raw)


def _csv_rows(text: str) -> Iterator[_Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1  # a quoted field may span lines: report the line the row starts on
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DatasetError(f"line {start}: malformed CSV ({exc})") from None
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = _csv_header(row, start)
            continue
        if len(row) != len(header):
            yield _Row(start, error=f"expected {len(header)} fields as in the header, got {len(row)}")
            continue
        yield _Row(start, raw=_csv_case(dict(zip(header, row, strict=True))))


def _csv_header(row: list[str], line: int) -> list[str]:
    header = [cell.strip().lower() for cell in row]
    for column in header:
        if column not in CSV_COLUMNS and not (column.startswith("metadata.") and len(column) > len("metadata.")):
            raise DatasetError(
                f"line {line}: unknown column {column!r} (known: {', '.join(CSV_COLUMNS)}, metadata.<key>)"
            )
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise DatasetError(f"line {line}: column {duplicated[0]!r} appears twice")
    if "question" not in header:
        raise DatasetError(f"line {line}: a CSV dataset needs a 'question' column")
    return header


def _csv_case(cells: dict[str, str]) -> dict[str, Any]:
    """A CSV row as the mapping a JSONL row would give (empty cells are absent, lists split on ';')."""

    def listed(column: str) -> list[str]:
        return [part.strip() for part in cells.get(column, "").split(";") if part.strip()]

    raw: dict[str, Any] = {}
    for column in ("id", "question", "reference", "expected_outcome"):
        if cells.get(column, "").strip():
            raw[column] = cells[column].strip() if column != "question" else cells[column]
    for column in ("required_facts", "gold_ids", "tags"):
        if listed(column):
            raw[column] = listed(column)
    who = {"subject": cells.get("user", "").strip(), "team": cells.get("team", "").strip()}
    identity: dict[str, Any] = {k: v for k, v in who.items() if v}
    identity.update({k: listed(k) for k in ("groups", "roles") if listed(k)})
    if identity:
        raw["identity"] = identity
    metadata = {
        k.removeprefix("metadata."): v.strip() for k, v in cells.items() if k.startswith("metadata.") and v.strip()
    }
    if metadata:
        raw["metadata"] = metadata
    return raw


def _yaml_rows(text: str) -> Iterator[_Row]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise DatasetError(f"invalid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise DatasetError("invalid YAML: nested too deeply") from None
    if root is None:
        return
    items = root
    if isinstance(root, yaml.MappingNode):
        keys = {_scalar(k): v for k, v in root.value}
        unknown = [k for k in keys if k != "cases"]
        if unknown or "cases" not in keys:
            raise DatasetError(f"line {root.start_mark.line + 1}: expected a list of cases or a mapping with only "
                               f"'cases'{f', not {unknown[0]!r}' if unknown else ''}")  # fmt: skip
        items = keys["cases"]
    if not isinstance(items, yaml.SequenceNode):
        raise DatasetError(f"line {items.start_mark.line + 1}: expected a list of cases")
    for item in items.value:
        line = item.start_mark.line + 1
        if not isinstance(item, yaml.MappingNode):
            yield _Row(line, error="expected a mapping of case fields")
            continue
        try:
            raw = yaml.SafeLoader("").construct_document(item)
        except yaml.YAMLError as exc:
            yield _Row(line, error=f"invalid YAML: {_yaml_problem(exc)}")
            continue
        key_lines = {str(_scalar(k)): k.start_mark.line + 1 for k, _ in item.value}
        yield _Row(line, raw=raw, key_lines=key_lines)


def _scalar(node: yaml.Node) -> Any:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        return f"{where}{exc.problem or exc.context or 'cannot parse'}"
    return str(exc)


# -- validation -------------------------------------------------------------------------------------------------


class _Invalid(ValueError):
    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key


def _validate(rows: Sequence[_Row]) -> tuple[list[Case], list[RowError]]:
    cases: list[Case] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    for row in rows:
        if row.error is not None:
            errors.append(RowError(row.line, row.error))
            continue
        try:
            case = _case(row.raw)
        except _Invalid as exc:
            errors.append(RowError(row.key_lines.get(exc.key or "", row.line), exc.message))
            continue
        first = seen.get(case.case_id)
        if first is not None:
            given = isinstance(row.raw, Mapping) and row.raw.get("id") is not None
            message = f"duplicate id {case.case_id!r} (first on line {first})" if given else None
            errors.append(RowError(row.line, message or f"duplicate case: the same input as line {first}"))
            continue
        seen[case.case_id] = row.line
        cases.append(case)
    return cases, errors


def _case(raw: Any) -> Case:
    if not isinstance(raw, Mapping):
        raise _Invalid(f"expected an object of case fields, got {_kind(raw)}")
    for key in raw:
        if key not in CASE_KEYS:
            raise _Invalid(f"unknown key {key!r} (known: {', '.join(CASE_KEYS)})", key=str(key))
    question = _text(raw, "question")
    messages = _messages(raw.get("messages"))
    if question is not None and messages is not None:
        raise _Invalid("give either a question or messages, not both", key="messages")
    if question is None and messages is None:
        raise _Invalid("missing question (give a question or messages)")
    case_id = _case_id(raw.get("id"))
    if case_id is None:
        case_id = _input_hash({"question": question} if question is not None else {"messages": messages})
    return Case(
        case_id=case_id,
        question=question,
        messages=messages,
        reference=_text(raw, "reference"),
        required_facts=_strings(raw, "required_facts"),
        gold_ids=_strings(raw, "gold_ids"),
        tags=_strings(raw, "tags"),
        identity=_identity(raw.get("identity")),
        expected=_expected(raw),
        metadata=_metadata(raw.get("metadata")),
    )


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _case_id(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise _Invalid(f"id: expected a string, got {_kind(value)}", key="id")
    case_id: str = value.strip()
    if not case_id or len(case_id) > MAX_ID_CHARS:
        raise _Invalid(f"id: must be 1 to {MAX_ID_CHARS} characters", key="id")
    return case_id


def _text(raw: Mapping[str, Any], key: str, limit: int = MAX_TEXT_CHARS) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid(f"{key}: expected a string, got {_kind(value)}", key=key)
    if not value.strip():
        if key == "question":
            raise _Invalid("question: must not be empty", key=key)
        return None
    if len(value) > limit:
        raise _Invalid(f"{key}: {len(value)} characters is over the {limit} limit", key=key)
    return value


def _strings(raw: Mapping[str, Any], key: str, prefix: str = "") -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _Invalid(f"{prefix}{key}: expected a list of non-empty strings", key=prefix.rstrip(".") or key)
    return tuple(v.strip() for v in value)


def _messages(value: Any) -> list[dict[str, str]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise _Invalid("messages: expected a non-empty list of {role, content}", key="messages")
    messages: list[dict[str, str]] = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping) or set(message) != {"role", "content"}:
            raise _Invalid(f"messages[{i}]: expected exactly the keys role and content", key="messages")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise _Invalid(f"messages[{i}].role: expected one of {', '.join(ROLES)}, got {role!r}", key="messages")
        if not isinstance(content, str):
            raise _Invalid(f"messages[{i}].content: expected a string, got {_kind(content)}", key="messages")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise _Invalid("messages: the last message must be a non-empty user turn", key="messages")
    total = sum(len(m["content"]) for m in messages)
    if total > MAX_TEXT_CHARS:
        raise _Invalid(f"messages: {total} characters is over the {MAX_TEXT_CHARS} limit", key="messages")
    return messages


def _identity(value: Any) -> Identity | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _Invalid(f"identity: expected a mapping of {', '.join(IDENTITY_KEYS)}", key="identity")
    for key in value:
        if key not in IDENTITY_KEYS:
            raise _Invalid(f"identity: unknown key {key!r} (known: {', '.join(IDENTITY_KEYS)})", key="identity")
    subject, team = value.get("subject"), value.get("team")
    if not isinstance(subject, str) or not subject.strip():
        raise _Invalid("identity: a subject (CSV: user) is required to run as someone", key="identity")
    if team is not None and not isinstance(team, str):
        raise _Invalid(f"identity.team: expected a string, got {_kind(team)}", key="identity")
    return Identity(
        subject=subject.strip(),
        team=(team.strip() or None) if team is not None else None,
        groups=_strings(value, "groups", prefix="identity."),
        roles=_strings(value, "roles", prefix="identity."),
    )


def _string_map(value: Any, key: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Invalid(f"{key}: expected a mapping, got {_kind(value)}", key=key)
    result: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str | int | float):  # bool is an int
            raise _Invalid(f"{key}.{k}: expected a string, number or boolean", key=key)
        result[k] = v if isinstance(v, str) else json.dumps(v)
    return result


def _expected(raw: Mapping[str, Any]) -> dict[str, str]:
    expected = _string_map(raw.get("expected"), "expected")
    shorthand = raw.get("expected_outcome")
    if shorthand is not None:
        if not isinstance(shorthand, str):
            raise _Invalid(f"expected_outcome: expected a string, got {_kind(shorthand)}", key="expected_outcome")
        if "outcome" in expected and expected["outcome"] != shorthand:
            raise _Invalid("expected_outcome disagrees with expected.outcome", key="expected_outcome")
        expected["outcome"] = shorthand
    outcome = expected.get("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        key = "expected_outcome" if shorthand is not None else "expected"
        raise _Invalid(f"expected outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}", key=key)
    return expected


def _metadata(value: Any) -> dict[str, str]:
    return _string_map(value, "metadata")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _input_hash(value: Mapping[str, Any]) -> str:
    """A stable id for a case that has none: a hash of its input, so re-imports keep matching it."""
    return hashlib.sha256(_canonical(value).encode("utf-8")).hexdigest()[:16]
