"""Retention and privacy: expired answers and their feedback are really deleted, and forgetting a person removes
their answers, feedback and guard findings and anonymises their request log — on SQLite and PostgreSQL, from the
store, the CLI, the admin API and the gateway's own start-up purge."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from conftest import RunningGateway, base_config, merge, settings_from
from gengate.cli.main import main
from gengate.settings import Settings
from gengate.store.db import Store, open_store
from gengate.store.feedback import FeedbackStore, ForgetCounts, PurgeCounts
from gengate.store.schema import feedback, guard_findings, requests, responses, trace_steps
from gengate.telemetry.trace_steps import retrieval_step, step_rows
from rag_corpus import JWT_AUTH, token

DAY = 86_400.0
APPS = {
    "apps": {
        "short": {"knowledge_bases": [], "retention_days": 1},
        "forever": {"knowledge_bases": [], "retention_days": None},
    }
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """`storage.url` for SQLite in a temporary directory or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'gengate.db'}"
    return str(request.getfixturevalue("pg_url"))


def sqlalchemy_url(storage_url: str) -> str:
    return Settings.model_validate({"storage": {"url": storage_url}}).database_url


def answer(request_id: str, app: str | None, ts: float, subject: str = "alice") -> dict[str, Any]:
    return {
        "request_id": request_id, "ts": ts, "app": app, "model": "m", "subject": subject, "team": "t",
        "key_id": None, "experiment": None, "variant": None, "outcome": "answered", "question": "q?",
        "answer": "a.", "payload": "full", "cost_usd": 0.01, "latency_ms": 5.0, "findings": 0, "sources": "[]",
    }  # fmt: skip


def request_row(request_id: str, ts: float, subject: str = "alice") -> dict[str, Any]:
    return {"id": request_id, "ts": ts, "subject": subject, "team": "t", "key_id": None, "endpoint": "apps.ask",
            "model": "m", "status": 200, "cost_usd": 0.01}  # fmt: skip


def event(request_id: str, event_id: str, ts: float, app: str | None, subject: str = "alice") -> dict[str, Any]:
    return {"request_id": request_id, "event_id": event_id, "ts": ts, "subject": subject, "team": "t", "app": app,
            "experiment": None, "variant": None, "kind": "thumbs", "value": 1.0, "comment": "kept?"}  # fmt: skip


def finding(request_id: str, ts: float) -> dict[str, Any]:
    return {"request_id": request_id, "ts": ts, "team": "t", "profile": "p", "stage": "input", "detector": "pii",
            "detector_version": "1", "label": "pii.email", "action": "flag", "score": 1.0, "span_start": 0,
            "span_end": 5, "value_hash": "abc"}  # fmt: skip


def steps(request_id: str, n: int = 1) -> list[dict[str, Any]]:
    """`n` trace steps of a request: chunks retrieved for it, which say what was looked up for the person."""
    return step_rows(request_id, [
        retrieval_step(kb="handbook", doc_id=f"doc-{i}.md", version=1, chunk_id=i, title="Leave", score=0.5, rank=i,
                       access=["group:staff"], dropped=False)
        for i in range(1, n + 1)
    ])  # fmt: skip


async def step_counts(store: Store) -> dict[str, int]:
    async with store.engine.connect() as conn:
        query = sa.select(trace_steps.c.request_id, sa.func.count()).group_by(trace_steps.c.request_id)
        return {str(rid): int(n) for rid, n in (await conn.execute(query)).all()}


async def ids(store: Store, table: sa.Table, column: str) -> set[str]:
    async with store.engine.connect() as conn:
        return {str(r[0]) for r in (await conn.execute(sa.select(table.c[column]))).all()}


async def populate_expiring(url: str, now: float) -> None:
    """Answers of a 1-day app, a kept-forever app, a removed app and plain model calls, old and new."""
    store = await open_store(url)
    try:
        olds = [("s-old", "short", now - 2 * DAY), ("f-old", "forever", now - 400 * DAY),
                ("gone-old", "retired", now - 100 * DAY), ("plain-old", None, now - 100 * DAY)]  # fmt: skip
        news = [("s-new", "short", now - 3600), ("gone-new", "retired", now - 10 * DAY)]
        rows = olds + news
        await store.write_requests(
            [request_row(rid, ts) for rid, _, ts in rows], [finding("s-old", now - 2 * DAY)],
            [answer(rid, app, ts) for rid, app, ts in rows],
            [*steps("s-old", 2), *steps("gone-old"), *steps("s-new"), *steps("f-old")],
        )  # fmt: skip
        await FeedbackStore(store.engine).add_events([
            event("s-old", "recent-feedback-on-an-expired-answer", now - 3600, "short"),
            event("s-new", "recent", now - 3600, "short"),
            event("f-old", "ancient", now - 399 * DAY, "forever"),
            event("never-written", "orphan", now - 2 * DAY, "short"),
        ])  # fmt: skip
    finally:
        await store.close()


async def assert_expired_are_gone(url: str) -> None:
    store = await open_store(url)
    try:
        assert await ids(store, responses, "request_id") == {"s-new", "f-old", "gone-new"}
        assert await ids(store, feedback, "event_id") == {"recent", "ancient"}
        # The request log has no payloads and stays whole; so do the guard findings of its requests.
        assert await ids(store, requests, "id") == {"s-old", "f-old", "gone-old", "plain-old", "s-new", "gone-new"}
        assert await ids(store, guard_findings, "request_id") == {"s-old"}
        # An expired answer's trace steps (what was retrieved for it) go with it; the kept answers keep theirs.
        assert await step_counts(store) == {"s-new": 1, "f-old": 1}
    finally:
        await store.close()


async def test_purge_deletes_answers_past_each_apps_retention_with_their_feedback(storage_url: str) -> None:
    url = sqlalchemy_url(storage_url)
    now = time.time()
    await populate_expiring(url, now)
    store = await open_store(url)
    try:
        cutoffs = {"short": now - 1 * DAY, "forever": None}
        counts = await FeedbackStore(store.engine).purge(cutoffs, others=now - 90 * DAY)
        assert counts == PurgeCounts(responses=3, feedback=2, trace_steps=3)
        assert await FeedbackStore(store.engine).purge(cutoffs, others=now - 90 * DAY) == PurgeCounts()
    finally:
        await store.close()
    await assert_expired_are_gone(url)


async def populate_people(url: str, now: float) -> None:
    store = await open_store(url)
    try:
        people = [("a1", "alice"), ("a2", "alice"), ("b1", "bob")]
        await store.write_requests(
            [request_row(rid, now, who) for rid, who in people] + [request_row("a-plain", now, "alice")],
            [finding("a1", now), finding("a-plain", now), finding("b1", now)],
            [answer(rid, "short", now, who) for rid, who in people],
            [*steps("a1", 2), *steps("a-plain"), *steps("b1")],
        )  # fmt: skip
        await FeedbackStore(store.engine).add_events(
            [event("a1", "e1", now, "short"), event("a2", "e2", now, "short"), event("b1", "e3", now, "short", "bob")]
        )
    finally:
        await store.close()


async def assert_only_bob_is_left(url: str) -> None:
    store = await open_store(url)
    try:
        assert await ids(store, responses, "request_id") == {"b1"}
        assert await ids(store, feedback, "event_id") == {"e3"}
        assert await ids(store, guard_findings, "request_id") == {"b1"}
        assert await step_counts(store) == {"b1": 1}
        async with store.engine.connect() as conn:
            logged = dict((await conn.execute(sa.select(requests.c.id, requests.c.subject))).all())
            costs = (await conn.execute(sa.select(sa.func.sum(requests.c.cost_usd)))).scalar()
        assert logged == {"a1": None, "a2": None, "a-plain": None, "b1": "bob"}
        assert costs == pytest.approx(0.04)  # spend reports still add up
    finally:
        await store.close()


async def test_forget_removes_a_persons_data_and_anonymises_their_requests(storage_url: str) -> None:
    url = sqlalchemy_url(storage_url)
    await populate_people(url, time.time())
    store = await open_store(url)
    try:
        counts = await FeedbackStore(store.engine).forget("alice")
        again = await FeedbackStore(store.engine).forget("alice")
    finally:
        await store.close()
    assert counts == ForgetCounts(responses=2, feedback=2, guard_findings=2, trace_steps=3, requests_anonymised=3)
    assert again == ForgetCounts()
    await assert_only_bob_is_left(url)


def write_config(tmp_path: Path, storage_url: str) -> Path:
    path = tmp_path / f"gengate-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump({"storage": {"url": storage_url}, **APPS}))
    return path


def test_cli_purge_and_forget_print_what_they_deleted(storage_url: str, tmp_path: Path) -> None:
    url = sqlalchemy_url(storage_url)
    config = write_config(tmp_path, storage_url)
    asyncio.run(populate_expiring(url, time.time()))
    purged = CliRunner().invoke(main, ["data", "purge", "--config", str(config)])
    assert purged.exit_code == 0, purged.output
    assert "responses deleted: 3\nfeedback deleted: 2\ntrace steps deleted: 3\n" in purged.stdout
    asyncio.run(assert_expired_are_gone(url))

    asyncio.run(populate_people(url, time.time()))
    refused = CliRunner().invoke(main, ["data", "forget", "--config", str(config), "--subject", "alice"], input="n\n")
    assert refused.exit_code != 0
    forgot = CliRunner().invoke(main, ["data", "forget", "--config", str(config), "--subject", "alice", "--yes"])
    assert forgot.exit_code == 0, forgot.output
    # alice also owns what populate_expiring wrote and the purge kept: 3 answers, 2 events, 1 finding, 2 steps.
    assert forgot.stdout.splitlines() == ["responses deleted: 5", "feedback deleted: 4", "guard findings deleted: 3",
                                          "trace steps deleted: 5", "requests anonymised: 9"]  # fmt: skip


GUARDED = {
    **JWT_AUTH,
    **APPS,
    "guard": {"profiles": {"p": {"input": [{"detector": "pii", "action": "flag"}]}}, "teams": {"staff-team": "p"}},
}


def test_admin_api_forgets_a_person_everywhere(storage_url: str, make_gateway) -> None:
    gw = make_gateway({**GUARDED, "storage": {"url": storage_url}})
    alice, bob = token("alice", ["staff"]), token("bob", ["staff"])
    with httpx.Client(base_url=gw.url, timeout=30) as client:

        def ask(credential: str) -> str:
            resp = client.post("/v1/apps/short/ask", json={"question": "Mail me at alice@example.com please"},
                               headers={"authorization": f"Bearer {credential}"})  # fmt: skip
            assert resp.status_code == 200, resp.text
            return str(resp.json()["id"])

        def rate(credential: str, request_id: str) -> httpx.Response:
            body = {"response_id": request_id, "event_id": uuid.uuid4().hex, "kind": "thumbs", "value": "up"}
            return client.post("/v1/feedback", json=body, headers={"authorization": f"Bearer {credential}"})

        hers, his = ask(alice), ask(bob)
        assert rate(alice, hers).status_code == 200 and rate(bob, his).status_code == 200
        gw.run(gw.gateway.traces.flush())
        assert gw.run(gw.gateway.store.findings_for(hers))  # the guard flagged the address: a finding to forget
        denied = client.delete("/admin/subjects/alice", headers={"authorization": f"Bearer {alice}"})
        assert denied.status_code == 403
        with gw.admin() as admin:
            resp = admin.delete("/admin/subjects/alice")
        assert resp.status_code == 200, resp.text
        # The app has no knowledge base and no model: its answer had no steps (retrieval, tools) to delete.
        assert resp.json() == {"subject": "alice", "deleted": {"responses": 1, "feedback": 1, "guard_findings": 1,
                                                               "trace_steps": 0},
                               "anonymised": {"requests": 2}}  # the ask, and the feedback call  # fmt: skip
        assert rate(alice, hers).status_code == 404  # her answer is gone for the feedback API too

    fb = gw.gateway.feedback.store
    assert gw.run(fb.get_response(hers)) is None and gw.run(fb.events_for(hers)) == []
    assert gw.run(gw.gateway.store.findings_for(hers)) == []
    assert gw.run(gw.gateway.store.get_request(hers))["subject"] is None
    assert gw.run(fb.get_response(his)) is not None and len(gw.run(fb.events_for(his))) == 1


def test_gateway_purges_expired_answers_when_it_starts(tmp_path: Path) -> None:
    settings = settings_from(merge(base_config(None, tmp_path / "data"), APPS), tmp_path)
    asyncio.run(populate_expiring(settings.database_url, time.time()))
    gw = RunningGateway(settings).start()
    try:
        deadline = time.monotonic() + 20
        while gw.run(gw.gateway.feedback.store.get_response("s-old")) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        gw.stop()
    asyncio.run(assert_expired_are_gone(settings.database_url))
