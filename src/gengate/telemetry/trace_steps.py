"""Trace steps: what one request did on its way, step by step — routing attempts, retrieved chunks, tool calls.

Owns: the shape of each step (a flat dict, stored as JSON in `trace_steps` next to the request's record) and what a
step may hold. Must not: keep payloads — never a chunk's text, a tool argument's value, or anything an upstream or
a backend wrote; errors are short summaries, names are cut to a bounded length.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from gengate.providers.routing import Attempt

ATTEMPT, RETRIEVAL, TOOL = "attempt", "retrieval", "tool"
KINDS = (ATTEMPT, RETRIEVAL, TOOL)
TEXT_CHARS = 200  # an error summary or a title
NAME_CHARS = 64  # a tool, parameter or argument name
MAX_NAMES = 20  # names listed per field (a model may invent any number of argument names)


def _text(value: str | None, limit: int = TEXT_CHARS) -> str | None:
    return None if value is None else value[:limit]


def _names(names: Iterable[str]) -> list[str]:
    return sorted({n[:NAME_CHARS] for n in names})[:MAX_NAMES]


def attempt_steps(attempts: Iterable[Attempt], round_no: int | None = None) -> list[dict[str, Any]]:
    """One step per try at a deployment: which, whether it answered, and how it failed (code, status, summary)."""
    return [
        {
            "kind": ATTEMPT, "deployment": a.deployment, "ok": a.ok, "code": a.code, "status": a.status,
            "message": _text(a.message), "latency_ms": None if a.latency_ms is None else round(a.latency_ms, 1),
            "round": round_no,
        }
        for a in attempts
    ]  # fmt: skip


def retrieval_step(
    *, kb: str, doc_id: str, version: int, chunk_id: int, title: str, score: float, rank: int,
    access: Iterable[str], dropped: bool,
) -> dict[str, Any]:  # fmt: skip
    """A chunk retrieval returned: its document, rank and score, the document's access list when it was read, and
    whether the context guard dropped it. Never the chunk's text."""
    return {
        "kind": RETRIEVAL, "kb": kb, "doc_id": doc_id, "version": version, "chunk_id": chunk_id,
        "title": _text(title), "score": round(float(score), 4), "rank": rank, "access": sorted(access),
        "dropped": dropped,
    }  # fmt: skip


def tool_step(
    *, tool: str, bound: Mapping[str, str], arguments: Iterable[str], unknown: Iterable[str] = (),
    ignored: Iterable[str] = (), ok: bool, status: int | None, error: str | None, round_no: int,
) -> dict[str, Any]:  # fmt: skip
    """A tool call the app executed: each bound parameter with where its value came from (`claims.sub`), the names
    of the arguments the model supplied (kept, or dropped as undeclared), the bound keys it tried to set (ignored),
    and the backend's status or the error. Never an argument's value."""
    return {
        "kind": TOOL, "tool": tool[:NAME_CHARS],
        "bound": [{"name": n[:NAME_CHARS], "source": s[:TEXT_CHARS]} for n, s in sorted(bound.items())],
        "arguments": _names(arguments), "unknown": _names(unknown), "ignored": _names(ignored), "ok": ok,
        "status": status, "error": _text(error), "round": round_no,
    }  # fmt: skip


def step_rows(request_id: str, steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The `trace_steps` rows of one request's steps, numbered in the order they happened."""
    return [
        {"request_id": request_id, "seq": seq, "kind": step["kind"],
         "detail": orjson.dumps({k: v for k, v in step.items() if k != "kind"}).decode()}
        for seq, step in enumerate(steps)
    ]  # fmt: skip


def from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored step back as a dict (`kind`, `seq` and its detail); a detail that is not a JSON object is empty."""
    try:
        detail = orjson.loads(row["detail"])
    except orjson.JSONDecodeError:
        detail = {}
    return {**(detail if isinstance(detail, dict) else {}), "kind": row["kind"], "seq": row["seq"]}
