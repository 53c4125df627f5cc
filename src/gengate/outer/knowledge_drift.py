"""Knowledge drift: what changed in an app's knowledge bases since its last evaluation run.

An evaluation run records, for each knowledge base the app reads, the newest `kb_events` id it saw; the events
after it are the drift. Each document is reported once with its net change over those events: `added` (new
since the run), `retired`, `changed` (new content, or retired and added again) or `access_changed` (only who may
read it). A document added and retired again since the run is no change. Rechunking a knowledge base changes
every chunk without changing a document, so it is reported per knowledge base; so is a knowledge base whose
history restarted (deleted and created again), or one the run did not read.

Owns: `knowledge_changes` (pure) and its value objects. Must not: query the store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["CHANGE_KINDS", "DocumentChange", "KnowledgeDrift", "knowledge_changes"]

Change = Literal["added", "changed", "retired", "access_changed"]
CHANGE_KINDS: tuple[Change, ...] = ("added", "changed", "retired", "access_changed")
_DOCUMENT_ACTIONS = frozenset(CHANGE_KINDS)


@dataclass(frozen=True, slots=True)
class DocumentChange:
    """One document's net change since the run: its newest version and when it last changed."""

    kb: str
    doc_id: str
    change: Change
    version: int | None
    ts: float
    events: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"kb": self.kb, "doc_id": self.doc_id, "change": self.change, "version": self.version, "ts": self.ts,
                "events": self.events}  # fmt: skip


@dataclass(frozen=True, slots=True)
class KnowledgeDrift:
    """An app's knowledge changes since its last evaluation run (`run_id` None: it was never evaluated)."""

    app: str
    run_id: str | None
    run_finished_at: float | None
    documents: tuple[DocumentChange, ...]
    rechunked: tuple[str, ...] = ()  # knowledge bases rebuilt under another chunking since the run
    new_kbs: tuple[str, ...] = ()  # knowledge bases the run did not read (or whose history restarted)

    @property
    def counts(self) -> dict[str, int]:
        """Documents per kind of change (every kind present, zeros included)."""
        found = Counter(d.change for d in self.documents)
        return {kind: found.get(kind, 0) for kind in CHANGE_KINDS}

    @property
    def total(self) -> int:
        """Changed documents plus rechunked knowledge bases: what the gauge reports."""
        return len(self.documents) + len(self.rechunked)

    @property
    def drifted(self) -> bool:
        """True when anything the last run evaluated has changed."""
        return self.total > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "app": self.app, "run_id": self.run_id, "run_finished_at": self.run_finished_at, "drifted": self.drifted,
            "total": self.total, "counts": self.counts, "rechunked": list(self.rechunked),
            "new_kbs": list(self.new_kbs), "documents": [d.to_dict() for d in self.documents],
        }  # fmt: skip


def _net(actions: Sequence[str]) -> Change | None:
    first, last = actions[0], actions[-1]
    if first == "added":
        return None if last == "retired" else "added"
    if last == "retired":
        return "retired"
    if any(a in ("changed", "added") for a in actions):
        return "changed"
    return "access_changed"


def knowledge_changes(
    app: str,
    events: Sequence[Mapping[str, Any]],
    *,
    run_id: str | None = None,
    run_finished_at: float | None = None,
    new_kbs: Sequence[str] = (),
) -> KnowledgeDrift:
    """Net document changes from `kb_events` rows (`id`, `kb`, `ts`, `action`, `doc_id`, `version`) after a run."""
    per_doc: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    rechunked: list[str] = []
    for event in sorted(events, key=lambda e: int(e["id"])):
        action = str(event["action"])
        if action == "rechunked":
            rechunked.append(str(event["kb"]))
        elif action in _DOCUMENT_ACTIONS and event.get("doc_id"):
            per_doc.setdefault((str(event["kb"]), str(event["doc_id"])), []).append(event)
    documents = []
    for (kb, doc_id), doc_events in per_doc.items():
        change = _net([str(e["action"]) for e in doc_events])
        if change is None:
            continue
        versions = [int(e["version"]) for e in doc_events if e.get("version") is not None]
        documents.append(
            DocumentChange(
                kb, doc_id, change, versions[-1] if versions else None, float(doc_events[-1]["ts"]), len(doc_events)
            )
        )
    documents.sort(key=lambda d: (d.kb, CHANGE_KINDS.index(d.change), d.doc_id))
    return KnowledgeDrift(
        app=app, run_id=run_id, run_finished_at=run_finished_at, documents=tuple(documents),
        rechunked=tuple(dict.fromkeys(rechunked)), new_kbs=tuple(new_kbs),
    )  # fmt: skip
