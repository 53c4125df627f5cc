"""Traces to datasets: production answers (often the ones users disliked) become evaluation cases.

Every question and answer is redacted here whatever the app's payload setting kept (`full` included), with the
same detectors as the gateway's `redacted` payloads, so a dataset never carries the personal data of the people
who asked. Answers stored with payloads `none` have no question and are skipped (and counted). The production
answer goes into `metadata.production_answer`, never into `reference`: an answer someone disliked is not a
reference. Cited documents become `gold_ids` only when asked for and only for answers whose latest thumbs was up.
The same question asked many times becomes one case (its id is a hash of the redacted question, so re-importing
newer traffic keeps matching it), with the newest answer and the number of occurrences.

Cases run as the caller that asked when the answer recorded one (access control is part of what is evaluated):
subject, team and the groups the caller had, plus any `groups` given. Answers stored before the groups were
recorded (schema v8) carry the subject and team only; the selection counts the cases left without groups.

Owns: `Trace`, `TraceOptions` and `cases_from_traces` (pure). Must not: query the store or import datasets.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gengate.eval.datasets import Case

__all__ = ["Trace", "TraceOptions", "TraceSelection", "cases_from_traces", "feedback_label"]


@dataclass(frozen=True, slots=True)
class Trace:
    """One recorded answer with its latest thumbs (1 up, 0 down, None: no thumbs) and guard finding labels.

    `groups` is None when the answer did not record the caller's groups (answers stored before schema v8).
    """

    request_id: str
    ts: float
    app: str
    outcome: str
    payload: str
    question: str | None = None
    answer: str | None = None
    subject: str | None = None
    team: str | None = None
    groups: tuple[str, ...] | None = None
    experiment: str | None = None
    variant: str | None = None
    cited: tuple[str, ...] = ()
    thumbs: float | None = None
    comment: str | None = None
    finding_labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TraceOptions:
    """How traces become cases.

    `limit` keeps the newest distinct questions; `sample` then draws that many at random with `seed`.
    """

    tags: tuple[str, ...] = ()
    identity: bool = True  # run each case as the caller that asked (subject, team) when recorded
    groups: tuple[str, ...] = ()  # added to every identity (older answers did not record the caller's groups)
    gold_from_citations: bool = False
    limit: int | None = None
    sample: int | None = None
    seed: int = 0


@dataclass(frozen=True, slots=True)
class TraceSelection:
    """The cases, newest first, and what happened to the traces that did not become one."""

    cases: list[Case]
    selected: int  # traces matching the query
    skipped_payload_none: int  # the app kept no payload: there is no question to evaluate
    skipped_no_question: int  # a payload was kept but the question is missing or empty
    duplicates: int  # traces merged into the case of the same (redacted) question
    left_out: int  # distinct questions beyond --limit or outside --sample
    without_groups: int  # cases running as a caller whose groups were not recorded
    notes: list[str] = field(default_factory=list)


def feedback_label(thumbs: float | None) -> str:
    """`up`, `down` or `none` for a latest thumbs value."""
    return "none" if thumbs is None else "up" if thumbs >= 0.5 else "down"


def _normal(question: str) -> str:
    return " ".join(question.casefold().split())


def cases_from_traces(traces: Sequence[Trace], options: TraceOptions, redact: Callable[[str], str]) -> TraceSelection:
    """Build cases from traces (given newest first), redacting every text with `redact`."""
    skipped_none = skipped_empty = 0
    groups: dict[str, list[tuple[Trace, str]]] = {}
    for trace in traces:
        if trace.payload == "none":
            skipped_none += 1
            continue
        question = redact(trace.question).strip() if trace.question else ""
        if not question:
            skipped_empty += 1
            continue
        groups.setdefault(_normal(question), []).append((trace, question))
    distinct = list(groups.values())  # insertion order: newest first
    kept = distinct[: options.limit] if options.limit is not None else distinct
    if options.sample is not None and options.sample < len(kept):
        chosen = set(random.Random(options.seed).sample(range(len(kept)), options.sample))
        kept = [g for i, g in enumerate(kept) if i in chosen]
    cases = [_case(group, options, redact) for group in kept]
    without_groups = sum(1 for c in cases if c.identity is not None and not c.identity.groups)
    notes = []
    if without_groups:
        notes.append(
            f"{without_groups} case(s) run as the caller that asked, without groups (none recorded with the "
            "answer): documents readable by group only will not be retrieved; add --group to give groups"
        )
    return TraceSelection(
        cases=cases, selected=len(traces), skipped_payload_none=skipped_none, skipped_no_question=skipped_empty,
        duplicates=sum(len(g) - 1 for g in distinct), left_out=len(distinct) - len(kept),
        without_groups=without_groups, notes=notes,
    )  # fmt: skip


def _case(group: list[tuple[Trace, str]], options: TraceOptions, redact: Callable[[str], str]) -> Case:
    trace, question = group[0]  # the newest answer to this question
    feedback = feedback_label(trace.thumbs)
    metadata = {
        "production_answer": redact(trace.answer) if trace.answer else "",
        "request_id": trace.request_id,
        "answered_at": datetime.fromtimestamp(trace.ts, UTC).isoformat(timespec="seconds"),
        "feedback": feedback,
        "outcome": trace.outcome,
        "payload": trace.payload,
    }
    if len(group) > 1:
        metadata["occurrences"] = str(len(group))
    if trace.comment:
        metadata["feedback_comment"] = redact(trace.comment)
    if trace.finding_labels:
        metadata["findings"] = ",".join(sorted(set(trace.finding_labels)))
    tags = ["source:traces", f"app:{trace.app}", f"feedback:{feedback}", f"outcome:{trace.outcome}"]
    if trace.experiment:
        metadata["experiment"], metadata["variant"] = trace.experiment, trace.variant or ""
        tags += [f"experiment:{trace.experiment}", f"variant:{trace.variant or ''}"]
    raw: dict[str, Any] = {
        "id": "trace-" + hashlib.sha256(_normal(question).encode("utf-8")).hexdigest()[:16],
        "question": question,
        "tags": list(dict.fromkeys([*tags, *options.tags])),
        "metadata": metadata,
    }
    if options.identity and trace.subject:
        recorded = trace.groups or ()
        raw["identity"] = {
            "subject": trace.subject,
            "team": trace.team,
            "groups": list(dict.fromkeys([*recorded, *options.groups])),
        }
    if options.gold_from_citations and feedback == "up" and trace.cited:
        raw["gold_ids"] = list(dict.fromkeys(trace.cited))
    return Case.from_dict(raw)
