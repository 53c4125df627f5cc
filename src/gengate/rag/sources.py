"""Document sources: a folder (or one file) plus an optional manifest, turned into documents ready to chunk.

Owns: walking a source folder safely and deterministically (hidden entries, symlinks that leave the folder,
symlinked folders), the manifest format and its validation, the access-list precedence
(caller > front matter > manifest entry > manifest default > knowledge-base default), and collecting per-file
problems so that one broken file never stops a batch.
Must not: chunk, embed, touch the database, or write files. Extraction itself lives in `rag.extract`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from gengate.rag.extract import DEFAULT_MAX_BYTES, SUPPORTED_SUFFIXES, Extracted, ExtractError, extract_file
from gengate.rag.types import AccessList

DEFAULT_PATTERNS: tuple[str, ...] = tuple(f"*{suffix}" for suffix in SUPPORTED_SUFFIXES)

NO_ACCESS_MESSAGE = (
    "no access list (give one in a manifest, front matter or --group/--user, or set a default on the knowledge base)"
)
OUTSIDE_MESSAGE = "symlink points outside the source folder"

_ACCESS_KEYS = ("users", "groups", "teams")
_ENTRY_KEYS = frozenset({*_ACCESS_KEYS, "title", "metadata"})
_TOP_KEYS = frozenset({"default", "documents"})


class _AccessError(ValueError):
    """Front matter carries an invalid access list, or none resolves (a problem for that one document)."""


class ManifestError(Exception):
    """The manifest is unreadable or invalid; the message names the offending key (and line when known)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """What a manifest says about the documents matching one path or glob."""

    access: AccessList = field(default_factory=AccessList)
    title: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated manifest: a default access list and entries keyed by relative POSIX path or fnmatch glob
    (`*` also matches across `/`, so `*.md` covers every Markdown file in every folder)."""

    default: AccessList = field(default_factory=AccessList)
    documents: dict[str, ManifestEntry] = field(default_factory=dict)

    def lookup(self, doc_id: str) -> ManifestEntry | None:
        """The most specific entry for a document: an exact path beats any glob, else the longest pattern."""
        exact = self.documents.get(doc_id)
        if exact is not None:
            return exact
        matches = [pattern for pattern in self.documents if fnmatch.fnmatchcase(doc_id, pattern)]
        if not matches:
            return None
        return self.documents[max(matches, key=lambda pattern: (len(pattern), pattern))]


@dataclass(frozen=True, slots=True)
class SourceDoc:
    """One extracted document with its resolved access list, ready for chunking and indexing."""

    doc_id: str
    title: str
    text: str
    format: str
    content_hash: str
    access: AccessList
    metadata: dict[str, str]
    size_bytes: int


@dataclass(frozen=True, slots=True)
class Problem:
    """A file that could not be ingested, and why (for humans)."""

    doc_id: str
    message: str


@dataclass(frozen=True, slots=True)
class ScanResult:
    """Documents ready to ingest, files that failed, and entries that were skipped on purpose."""

    documents: list[SourceDoc] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def scan_source(
    root: Path,
    *,
    manifest: Path | None = None,
    access: AccessList | None = None,
    default_access: AccessList | None = None,
    include: Sequence[str] = DEFAULT_PATTERNS,
    max_file_bytes: int = DEFAULT_MAX_BYTES,
    progress: Callable[[int, int, str], None] | None = None,
) -> ScanResult:
    """Extract every supported document under `root` (a folder, walked recursively, or one file).

    Raises ManifestError for an invalid manifest and FileNotFoundError when `root` does not exist; every
    per-file failure becomes a Problem instead. `access` and `default_access` are trusted as given.
    """
    loaded = load_manifest(manifest) if manifest is not None else Manifest()
    if not root.exists() and not root.is_symlink():
        raise FileNotFoundError(f"no such file or folder: {root}")
    problems: list[Problem] = []
    skipped: list[str] = []
    if root.is_dir():
        base = root.resolve()
        manifest_path = manifest.resolve() if manifest is not None else None
        candidates: list[tuple[str, Path]] = []
        for doc_id, path in _walk(root, base, problems, skipped):
            if manifest_path is not None and path.resolve() == manifest_path:
                continue
            if _wanted(doc_id, include):
                candidates.append((doc_id, path))
            else:
                skipped.append(doc_id)
    else:
        candidates = [(root.name, root)]
    documents: list[SourceDoc] = []
    total = len(candidates)
    for done, (doc_id, path) in enumerate(candidates, start=1):
        try:
            doc = _load_document(doc_id, path, loaded, access, default_access, max_file_bytes)
        except ExtractError as exc:
            problems.append(Problem(doc_id, exc.message))
        except _AccessError as exc:
            problems.append(Problem(doc_id, str(exc)))
        except OSError as exc:
            problems.append(Problem(doc_id, f"cannot read: {exc.strerror or exc}"))
        else:
            documents.append(doc)
        if progress is not None:
            progress(done, total, doc_id)
    return ScanResult(documents=documents, problems=problems, skipped=skipped)


def _wanted(doc_id: str, include: Sequence[str]) -> bool:
    """Supported suffix, and matching one include pattern: a glob on the name or relative path, or a bare suffix."""
    name = PurePosixPath(doc_id).name.lower()
    if not name.endswith(SUPPORTED_SUFFIXES):
        return False
    lowered = doc_id.lower()
    for pattern in (p.lower() for p in include):
        if pattern.startswith(".") and not any(ch in pattern for ch in "*?["):
            if name.endswith(pattern):
                return True
        elif fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(lowered, pattern):
            return True
    return False


def _walk(root: Path, base: Path, problems: list[Problem], skipped: list[str]) -> list[tuple[str, Path]]:
    """Files under root in sorted order as (relative POSIX id, path); never follows symlinked folders, and
    reports file symlinks that resolve outside the folder."""
    out: list[tuple[str, Path]] = []
    pending: list[tuple[Path, str]] = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            problems.append(Problem(prefix or ".", f"cannot list folder: {exc.strerror or exc}"))
            continue
        subfolders: list[tuple[Path, str]] = []
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            if entry.name.startswith("."):
                skipped.append(rel + ("/" if entry.is_dir(follow_symlinks=False) else ""))
                continue
            path = Path(entry.path)
            try:
                if entry.is_symlink():
                    if path.is_dir():
                        skipped.append(rel + "/")  # symlinked folders are never followed (loops, escapes)
                        continue
                    try:
                        target = path.resolve(strict=True)
                    except (OSError, RuntimeError):
                        if rel.lower().endswith(SUPPORTED_SUFFIXES):
                            problems.append(Problem(rel, "broken symlink"))
                        else:
                            skipped.append(rel)
                        continue
                    if not target.is_relative_to(base):
                        if rel.lower().endswith(SUPPORTED_SUFFIXES):
                            problems.append(Problem(rel, OUTSIDE_MESSAGE))
                        else:
                            skipped.append(rel)
                        continue
                    if not target.is_file():
                        skipped.append(rel)
                        continue
                elif entry.is_dir(follow_symlinks=False):
                    subfolders.append((path, rel + "/"))
                    continue
                elif not entry.is_file(follow_symlinks=False):
                    skipped.append(rel)  # sockets, fifos, devices
                    continue
            except OSError as exc:
                problems.append(Problem(rel, f"cannot read: {exc.strerror or exc}"))
                continue
            out.append((rel, path))
        pending.extend(reversed(subfolders))
    out.sort(key=lambda item: item[0])
    return out


def _load_document(
    doc_id: str,
    path: Path,
    manifest: Manifest,
    access: AccessList | None,
    default_access: AccessList | None,
    max_file_bytes: int,
) -> SourceDoc:
    size = path.stat().st_size
    extracted = extract_file(path, max_bytes=max_file_bytes)
    entry = manifest.lookup(doc_id)
    resolved = _first_nonempty(
        access,
        front_matter_access(extracted.front_matter),
        entry.access if entry is not None else None,
        manifest.default,
        default_access,
    )
    if resolved is None:
        raise _AccessError(NO_ACCESS_MESSAGE)
    metadata = dict(entry.metadata) if entry is not None else {}
    metadata.update(path=doc_id, format=extracted.format)
    return SourceDoc(
        doc_id=doc_id,
        title=_title(extracted, entry),
        text=extracted.text,
        format=extracted.format,
        content_hash=hashlib.sha256(extracted.text.encode("utf-8")).hexdigest(),
        access=resolved,
        metadata=metadata,
        size_bytes=size,
    )


def _title(extracted: Extracted, entry: ManifestEntry | None) -> str:
    """Front matter title > manifest title > what extraction found (heading, metadata, file stem)."""
    if extracted.front_matter.get("title") or entry is None or not entry.title:
        return extracted.title
    return entry.title


def _first_nonempty(*candidates: AccessList | None) -> AccessList | None:
    return next((c for c in candidates if c is not None and not c.empty), None)


def front_matter_access(front_matter: Mapping[str, Any]) -> AccessList | None:
    """The access list in Markdown front matter (`access: {groups: [...]}` and/or top-level `groups:` …).

    Raises ValueError naming the key when a list or name is malformed.
    """
    names: dict[str, list[str]] = {key: [] for key in _ACCESS_KEYS}
    nested = front_matter.get("access")
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise _AccessError("front matter 'access' must be a mapping with users, groups and/or teams")
        for key in nested:
            if key not in _ACCESS_KEYS:
                raise _AccessError(f"front matter 'access.{key}' is not one of users, groups, teams")
        for key in _ACCESS_KEYS:
            if key in nested:
                names[key] += _names(nested[key], f"front matter 'access.{key}'", _AccessError)
    for key in _ACCESS_KEYS:
        if key in front_matter:
            names[key] += _names(front_matter[key], f"front matter '{key}'", _AccessError)
    found = AccessList(**{key: tuple(dict.fromkeys(values)) for key, values in names.items()})
    return None if found.empty else found


def _names(value: Any, where: str, error: type[Exception]) -> list[str]:
    if not isinstance(value, list):
        raise error(f"{where} must be a list of names, e.g. [finance]")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item or any(ch.isspace() or ch == ":" for ch in item):
            raise error(f"{where} has an invalid name {item!r} (non-empty, no spaces, no ':')")
        out.append(item)
    return out


# --- manifest ---------------------------------------------------------------------------------------------------


def load_manifest(path: Path) -> Manifest:
    """Read and validate a YAML or JSON manifest file."""
    name = path.name
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {name}: cannot read ({exc})") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ManifestError(
                f"manifest {name}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from exc
    else:
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ManifestError(f"manifest {name}: invalid YAML{where}: {problem}") from exc
    return parse_manifest(data, name=name)


def parse_manifest(data: Any, *, name: str = "manifest") -> Manifest:
    """Validate a loaded manifest: `{default: {users, groups, teams}, documents: {<path or glob>: {users, groups,
    teams, title, metadata}}}`. Raises ManifestError naming the offending key."""
    if data is None:
        return Manifest()
    if not isinstance(data, Mapping):
        raise ManifestError(f"manifest {name}: the top level must be a mapping with 'default' and/or 'documents'")
    for key in data:
        if key not in _TOP_KEYS:
            raise ManifestError(f"manifest {name}: unknown key {key!r} (expected 'default' and/or 'documents')")
    default = _access(data.get("default"), f"manifest {name}: 'default'", allowed=frozenset(_ACCESS_KEYS))
    documents_raw = data.get("documents")
    if documents_raw is None:
        documents_raw = {}
    if not isinstance(documents_raw, Mapping):
        raise ManifestError(f"manifest {name}: 'documents' must be a mapping of path or glob to settings")
    documents: dict[str, ManifestEntry] = {}
    for key, spec in documents_raw.items():
        pattern = _pattern(key, name)
        where = f"manifest {name}: documents.{key!r}"
        if spec is None:
            spec = {}
        if not isinstance(spec, Mapping):
            raise ManifestError(f"{where} must be a mapping (users, groups, teams, title, metadata)")
        title = spec.get("title")
        if title is not None and not isinstance(title, str):
            raise ManifestError(f"{where}.title must be a string")
        documents[pattern] = ManifestEntry(
            access=_access(spec, where, allowed=_ENTRY_KEYS),
            title=title,
            metadata=_metadata(spec.get("metadata"), f"{where}.metadata"),
        )
    return Manifest(default=default, documents=documents)


def _pattern(key: Any, name: str) -> str:
    if not isinstance(key, str) or not key.strip():
        raise ManifestError(f"manifest {name}: document key {key!r} must be a non-empty relative path or glob")
    pattern = key.removeprefix("./")
    parts = PurePosixPath(pattern).parts
    if pattern.startswith(("/", "\\")) or (len(pattern) > 1 and pattern[1] == ":") or not parts:
        raise ManifestError(f"manifest {name}: document key {key!r} must be relative to the source folder")
    if ".." in parts or ".." in pattern.split("\\"):
        raise ManifestError(f"manifest {name}: document key {key!r} must not contain '..'")
    return pattern


def _access(spec: Any, where: str, *, allowed: frozenset[str]) -> AccessList:
    if spec is None:
        return AccessList()
    if not isinstance(spec, Mapping):
        raise ManifestError(f"{where} must be a mapping with users, groups and/or teams")
    for key in spec:
        if key not in allowed:
            raise ManifestError(f"{where}: unknown key {key!r} (expected one of {', '.join(sorted(allowed))})")
    values = {
        key: tuple(dict.fromkeys(_names(spec[key], f"{where}.{key}", ManifestError)))
        for key in _ACCESS_KEYS
        if spec.get(key) is not None
    }
    return AccessList(**values)


def _metadata(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ManifestError(f"{where} must be a mapping of names to values")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise ManifestError(f"{where}: key {key!r} must be a non-empty string")
        if isinstance(item, bool):
            out[key] = "true" if item else "false"
        elif isinstance(item, str | int | float):
            out[key] = str(item)
        else:
            raise ManifestError(f"{where}.{key} must be a string or number")
    return out
