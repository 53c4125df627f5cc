"""Value objects shared by ingestion, chunking, indexing and retrieval.

Owns: the access-token vocabulary (who may read a document) and the shapes passed between the RAG modules.
Must not: do I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gengate.types import Principal


@dataclass(frozen=True, slots=True)
class AccessList:
    """Who may read a document: any listed user, group or team. Empty means nobody (deny by default)."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """True when the list grants nobody."""
        return not (self.users or self.groups or self.teams)

    def tokens(self) -> frozenset[str]:
        """The list as access tokens (`user:<id>`, `group:<name>`, `team:<name>`)."""
        return access_tokens(users=self.users, groups=self.groups, teams=self.teams)


def access_tokens(
    *, users: Iterable[str] = (), groups: Iterable[str] = (), teams: Iterable[str] = ()
) -> frozenset[str]:
    """Access tokens for users, groups and teams (empty names are ignored)."""
    out = {f"user:{u}" for u in users if u}
    out |= {f"group:{g}" for g in groups if g}
    out |= {f"team:{t}" for t in teams if t}
    return frozenset(out)


def caller_tokens(principal: Principal) -> frozenset[str]:
    """What a caller holds: their subject, every group claim and their team. A chunk is readable when its
    access tokens and these intersect."""
    return access_tokens(users=(principal.subject,), groups=principal.groups, teams=(principal.team,))


@dataclass(frozen=True, slots=True)
class Piece:
    """One chunk produced by a chunking strategy.

    `text` is what gets indexed; `context` is what a model or answerer is shown (wider for sentence-window,
    otherwise the same text). Offsets point into the document text the chunker was given.
    """

    text: str
    start: int
    end: int
    heading: str = ""
    context: str = ""

    @property
    def shown(self) -> str:
        """The text to show for this chunk."""
        return self.context or self.text


@dataclass(frozen=True, slots=True)
class IndexRow:
    """One searchable chunk as the index sees it."""

    chunk_id: int
    doc_id: str
    title: str
    text: str
    access: frozenset[str]
    embedding: object | None = None  # a float32 vector (numpy) or None when the KB has no dense index
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hit:
    """A retrieved chunk with its fused score (higher is better) and the per-retriever ranks."""

    chunk_id: int
    score: float
    lexical_rank: int | None = None
    dense_rank: int | None = None
