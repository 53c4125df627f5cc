"""Traces to datasets, as a team triages what users disliked: real answers from a gateway over HTTP (questions with
personal data, apps keeping full, redacted or no payloads), thumbs on some of them, then `gengate dataset
from-traces` — redacted whatever the app kept, the production answer kept apart from any reference, identities
kept for access control — and the dataset runs through `gengate eval run`; on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner, Result

from conftest import RunningGateway, base_config, merge
from dashboard_helpers import finding_row
from gengate.cli.main import main
from gengate.settings import load_settings
from gengate.store.db import open_store
from gengate.store.feedback import FeedbackStore
from gengate.store.outer_runs import OuterRunsStore, TraceQuery
from gengate.store.schema import responses
from rag_corpus import JWT_AUTH, load_kb, token, write_corpus

BOB = token("bob", ["staff"], team="staff-team")
APPS = {
    "hr-full": {"knowledge_bases": ["handbook"], "payloads": "full", "guard_profile": "flag-pii"},
    "hr": {"knowledge_bases": ["handbook"], "payloads": "redacted", "guard_profile": "flag-pii"},
    "hr-none": {"knowledge_bases": ["handbook"], "payloads": "none"},
}
GUARD = {"profiles": {"flag-pii": {"input": [{"detector": "pii", "action": "flag"}]}}}

# Personal data in questions, and what must never reach a dataset.
PII = ["jane.doe@example.com", "+44 20 7946 0958", "4111 1111 1111 1111", "DE89370400440532013000", "7946"]
QUESTIONS = {
    "leave": "My email is jane.doe@example.com - how many days of annual leave do I get?",
    "carry": "Call me on +44 20 7946 0958: can unused leave be carried over to next year?",
    "hotel": "My card 4111 1111 1111 1111 paid the hotel; how much is a hotel night reimbursed?",
    "train": "Is train travel reimbursed? Pay it to IBAN DE89370400440532013000 please.",
    "sick": "Does sick leave count against annual leave?",
}


@pytest.fixture
def project(storage: dict[str, Any], tmp_path: Path) -> Iterator[tuple[Path, RunningGateway]]:
    """A config file and a gateway serving it, on SQLite or PostgreSQL: a handbook knowledge base, JWT users, three
    payload modes."""
    config = merge(base_config(None, tmp_path / "data"), {**JWT_AUTH, "apps": APPS, "guard": GUARD, **storage})
    config["drift"] = {"enabled": False}
    path = tmp_path / "gengate.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path, environ={})
    load_kb(settings, "handbook", write_corpus(tmp_path / "corpus"))
    gw = RunningGateway(settings).start()
    yield path, gw
    gw.stop()


def cli(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--config", str(config)], catch_exceptions=False)


def ask(gw: RunningGateway, app: str, question: str) -> dict[str, Any]:
    """One answer over HTTP (the ask endpoint), as bob of the staff group."""
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        resp = client.post(f"/v1/apps/{app}/ask", json={"question": question},
                           headers={"authorization": f"Bearer {BOB}"})  # fmt: skip
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def ask_chat(gw: RunningGateway, app: str, question: str) -> str:
    """One answer through the OpenAI API; returns the request id the answer is recorded under."""
    with httpx.Client(base_url=gw.base_url, timeout=30) as client:
        resp = client.post("/chat/completions", json={"model": f"app/{app}", "messages": [
            {"role": "user", "content": question}]}, headers={"authorization": f"Bearer {BOB}"})  # fmt: skip
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"]).removeprefix("chatcmpl-")


def thumbs(gw: RunningGateway, response_id: str, up: bool, comment: str | None = None) -> None:
    """Bob's thumbs on an answer he received, through `POST /v1/feedback`."""
    event = {"response_id": response_id, "event_id": uuid.uuid4().hex, "kind": "thumbs",
             "value": "up" if up else "down", "comment": comment}  # fmt: skip
    with httpx.Client(base_url=gw.base_url, timeout=30) as client:
        resp = client.post("/feedback", json=event, headers={"authorization": f"Bearer {BOB}"})
    assert resp.status_code == 200, resp.text


def wait_for_answers(gw: RunningGateway, app: str, count: int) -> None:
    """Until the trace writer has stored `count` answers of the app."""
    query = sa.select(sa.func.count()).select_from(responses).where(responses.c.app == app)

    async def stored() -> int:
        async with gw.gateway.store.engine.connect() as conn:
            return int((await conn.execute(query)).scalar() or 0)

    deadline = time.monotonic() + 30
    while gw.run(stored()) < count:
        assert time.monotonic() < deadline, f"answers of {app} were not stored"
        time.sleep(0.05)


def shown(config: Path, name: str) -> dict[str, Any]:
    result = cli(config, "dataset", "show", name, "--json", "--limit", "0")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def assert_no_pii(text: str) -> None:
    for value in PII:
        assert value not in text, f"{value!r} survived into the dataset"


def test_disliked_answers_become_a_redacted_dataset_that_runs(project: tuple[Path, RunningGateway]) -> None:
    config, gw = project
    ids = {key: ask(gw, "hr-full", q)["id"] for key, q in QUESTIONS.items()}
    wait_for_answers(gw, "hr-full", len(QUESTIONS))
    for key in ("leave", "hotel", "sick"):
        thumbs(gw, ids[key], up=False, comment="wrong, reply to jane.doe@example.com")
    thumbs(gw, ids["carry"], up=False)
    thumbs(gw, ids["carry"], up=True)  # changed their mind: the latest thumbs counts

    built = cli(config, "dataset", "from-traces", "disliked", "--app", "hr-full", "--feedback", "down",
                "--group", "staff", "--tag", "triage")  # fmt: skip
    assert built.exit_code == 0, built.output
    assert "selected 3 answers of app hr-full: 0 skipped (payloads none)" in built.output
    assert "disliked v1: 3 cases from traces" in built.output

    dataset = shown(config, "disliked")
    assert_no_pii(json.dumps(dataset))
    cases = {c["metadata"]["request_id"]: c for c in dataset["cases"]}
    assert set(cases) == {ids["leave"], ids["hotel"], ids["sick"]}
    leave = cases[ids["leave"]]
    assert leave["question"] == "My email is [PII_EMAIL] - how many days of annual leave do I get?"
    assert leave["reference"] is None and leave["gold_ids"] == []  # a disliked answer is no reference
    assert "25 days" in leave["metadata"]["production_answer"]
    assert leave["metadata"]["feedback"] == "down" and leave["metadata"]["findings"] == "pii.email"
    assert leave["metadata"]["feedback_comment"] == "wrong, reply to [PII_EMAIL]"
    assert {"app:hr-full", "feedback:down", "outcome:answered", "triage"} <= set(leave["tags"])
    assert leave["identity"] == {"subject": "bob", "team": "staff-team", "groups": ["staff"], "roles": []}

    run = cli(config, "eval", "run", "disliked", "--app", "hr-full", "--trials", "1")
    assert run.exit_code == 0, run.output
    run_id = next(line.split(":", 1)[0] for line in run.output.splitlines() if line.startswith("disliked-"))
    result = json.loads((config.parent / "data" / "evals" / f"{run_id}.json").read_text())
    assert len(result["trials"]) == 3 and not any(t["error"] for t in result["trials"])
    assert all(t["scores"]["latency"] is not None and t["scores"]["refusal"] is not None for t in result["trials"])
    sick = next(t for t in result["trials"] if t["case_id"] == cases[ids["sick"]]["id"])
    assert sick["outcome"] == "answered" and sick["scores"]["faithfulness"] is not None  # as bob of group staff
    # The run was recorded with the knowledge it evaluated: nothing has changed since.
    knowledge = cli(config, "drift", "knowledge", "--app", "hr-full", "--fail-on-drift")
    assert knowledge.exit_code == 0 and f"since evaluation run {run_id}" in knowledge.output

    again = cli(config, "dataset", "from-traces", "disliked", "--app", "hr-full", "--feedback", "down",
                "--group", "staff", "--tag", "triage")  # fmt: skip
    assert "disliked is unchanged (v1)" in again.output


def test_payload_modes_redaction_and_duplicates(project: tuple[Path, RunningGateway]) -> None:
    config, gw = project
    for app in ("hr", "hr-none"):
        for question in (QUESTIONS["leave"], QUESTIONS["carry"], QUESTIONS["leave"]):
            ask_chat(gw, app, question)
        wait_for_answers(gw, app, 3)

    nothing = cli(config, "dataset", "from-traces", "none-kept", "--app", "hr-none")
    assert nothing.exit_code == 1
    assert "selected 3 answers of app hr-none: 3 skipped (payloads none)" in nothing.output
    assert "no cases; nothing imported" in nothing.output

    built = cli(config, "dataset", "from-traces", "everything", "--app", "hr")
    assert built.exit_code == 0, built.output
    assert "1 duplicate questions merged" in built.output
    assert "without groups" not in built.output  # the caller's groups were recorded with the answers
    dataset = shown(config, "everything")
    assert_no_pii(json.dumps(dataset))
    assert dataset["case_count"] == 2
    leave = next(c for c in dataset["cases"] if "annual leave do I get" in c["question"])
    assert leave["metadata"]["occurrences"] == "2" and leave["metadata"]["feedback"] == "none"
    assert leave["identity"]["subject"] == "bob" and leave["identity"]["groups"] == ["staff"]

    anonymous = cli(config, "dataset", "from-traces", "anonymous", "--app", "hr", "--no-identity")
    assert anonymous.exit_code == 0 and all(c["identity"] is None for c in shown(config, "anonymous")["cases"])


def test_filters_gold_ids_and_sampling(project: tuple[Path, RunningGateway]) -> None:
    config, gw = project
    ids = {key: ask(gw, "hr", q)["id"] for key, q in QUESTIONS.items()}
    wait_for_answers(gw, "hr", len(QUESTIONS))
    thumbs(gw, ids["sick"], up=True)
    thumbs(gw, ids["hotel"], up=False)

    liked = cli(config, "dataset", "from-traces", "liked", "--app", "hr", "--feedback", "up", "--gold-from-citations")
    assert liked.exit_code == 0, liked.output
    [case] = shown(config, "liked")["cases"]
    assert case["gold_ids"] == ["handbook/leave.md"] and case["tags"][:3] == ["source:traces", "app:hr", "feedback:up"]
    disliked = cli(config, "dataset", "from-traces", "disliked", "--app", "hr", "--feedback", "down",
                   "--gold-from-citations")  # fmt: skip
    assert disliked.exit_code == 0 and shown(config, "disliked")["cases"][0]["gold_ids"] == []  # not for a dislike

    flagged = cli(config, "dataset", "from-traces", "flagged", "--app", "hr", "--with-findings")
    assert "selected 4 answers" in flagged.output  # every question but the one without personal data
    unrated = cli(config, "dataset", "from-traces", "unrated", "--app", "hr", "--feedback", "none", "--limit", "2")
    assert "selected 3 answers" in unrated.output and "1 left out by --limit/--sample" in unrated.output
    future = cli(config, "dataset", "from-traces", "later", "--app", "hr", "--since", "2999-01-01")
    assert future.exit_code == 1 and "selected 0 answers" in future.output

    first = cli(config, "dataset", "from-traces", "sampled", "--app", "hr", "--sample", "2", "--seed", "7")
    assert "sampled v1: 2 cases" in first.output
    same = cli(config, "dataset", "from-traces", "sampled", "--app", "hr", "--sample", "2", "--seed", "7")
    assert "sampled is unchanged (v1)" in same.output
    other = cli(config, "dataset", "from-traces", "sampled", "--app", "hr", "--sample", "3", "--seed", "7")
    assert "sampled v2: 3 cases" in other.output
    diff = cli(config, "dataset", "diff", "sampled", "1", "2")
    assert diff.exit_code == 0 and "sampled v1 → v2" in diff.output


def answer(request_id: str, ts: float, app: str = "hr", outcome: str = "answered", findings: int = 0) -> dict[str, Any]:
    return {
        "request_id": request_id, "ts": ts, "app": app, "model": f"app/{app}", "subject": "bob", "team": "staff-team",
        "key_id": None, "experiment": None, "variant": None, "outcome": outcome, "question": f"question {request_id}?",
        "answer": "an answer", "payload": "full", "cost_usd": 0.0, "latency_ms": 1.0, "findings": findings,
        "sources": "[]",
    }  # fmt: skip


def thumbs_row(request_id: str, event_id: str, ts: float, value: float, comment: str | None = None) -> dict[str, Any]:
    return {"request_id": request_id, "event_id": event_id, "ts": ts, "subject": "bob", "team": "staff-team",
            "app": "hr", "experiment": None, "variant": None, "kind": "thumbs", "value": value,
            "comment": comment}  # fmt: skip


async def test_selection_reads_the_latest_thumbs_and_the_time_window_in_sql(database_url: str) -> None:
    t = 1_700_000_000.0
    store = await open_store(database_url)
    try:
        await store.write_requests(
            [], [finding_row("r4", ts=t + 40, label=label) for label in ("pii.phone", "pii.email")],
            [answer("r1", t + 10), answer("r2", t + 20), answer("r3", t + 30), answer("r4", t + 40, findings=2),
             answer("r5", t + 50, outcome="no_answer"), answer("elsewhere", t + 45, app="desk")],
        )  # fmt: skip
        feedback = FeedbackStore(store.engine)
        await feedback.add_events([thumbs_row("r1", "1", t + 11, 1.0), thumbs_row("r1", "2", t + 12, 0.0, "wrong")])
        await feedback.add_events([thumbs_row("r2", "3", t + 21, 0.0)])
        await feedback.add_events([thumbs_row("r2", "4", t + 21, 1.0)])  # the same instant: the later event wins
        await feedback.add_events([{**thumbs_row("r3", "5", t + 31, 1.0), "kind": "copy", "value": None}])
        runs = OuterRunsStore(store.engine)

        async def ids(**query: Any) -> list[str]:
            return [trace.request_id for trace in await runs.traces(TraceQuery(app="hr", **query))]

        assert await ids() == ["r5", "r4", "r3", "r2", "r1"]  # newest first, only the app's
        assert await ids(feedback="down") == ["r1"]
        assert await ids(feedback="up") == ["r2"]
        assert await ids(feedback="none") == ["r5", "r4", "r3"]  # a copy is no thumbs
        assert await ids(since=t + 20) == ["r5", "r4", "r3", "r2"]  # since is inclusive
        assert await ids(until=t + 40) == ["r3", "r2", "r1"]  # until is exclusive
        assert await ids(since=t + 20, until=t + 40, feedback="any") == ["r3", "r2"]
        assert await ids(with_findings=True) == ["r4"]
        assert await ids(outcome="no_answer") == ["r5"]
        assert [x.request_id for x in await runs.traces(TraceQuery(app="hr"), max_rows=2)] == ["r5", "r4"]
        by_id = {x.request_id: x for x in await runs.traces(TraceQuery(app="hr"))}
        assert (by_id["r1"].thumbs, by_id["r1"].comment, by_id["r2"].thumbs) == (0.0, "wrong", 1.0)
        assert by_id["r4"].finding_labels == ("pii.phone", "pii.email")  # in the order they were found
        assert await runs.recent_questions("hr", since=t + 40) == ["question r5?", "question r4?"]
    finally:
        await store.close()
