"""The dashboard where the database does the work, on PostgreSQL as on SQLite: pages filled with guard findings,
knowledge and feedback, filtered searches paged by keyset, roll-ups raced by two gateways sharing one database, and
a request log that keeps going when a client sends text PostgreSQL cannot store (SQLite stores anything)."""

from __future__ import annotations

import asyncio
import html
import json
import math
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from conftest import ADMIN_KEY, RunningGateway
from dashboard_helpers import UI, UiClient, card, cells, finding_row, request_row, seed, walk
from gengate.rag.sources import scan_source
from gengate.store.db import open_store
from gengate.store.feedback import FeedbackStore
from gengate.store.schema import ui_rollup_apps, ui_rollup_keys, ui_rollup_requests
from gengate.store.ui_rollups import HOUR, LAG_SECONDS, roll_up, rolled_until
from rag_corpus import DOCS, JWT_AUTH, POISON, load_kb, token, write_corpus

CONFIG = {**UI, **JWT_AUTH, "rag": {"embeddings": "none"}}


@pytest.fixture
def gw(storage: dict[str, Any], make_gateway: Any) -> RunningGateway:
    """A gateway serving the dashboard (JWT sign-in too), on SQLite and on PostgreSQL."""
    return make_gateway({**CONFIG, **storage})


def answer_row(request_id: str, team: str, app: str, ts: float) -> dict[str, Any]:
    return {
        "request_id": request_id, "ts": ts, "app": app, "model": f"app/{app}", "subject": "ann", "team": team,
        "key_id": None, "experiment": None, "variant": None, "outcome": "answered", "question": None,
        "answer": None, "payload": "none", "cost_usd": 0.25, "latency_ms": 5.0, "findings": 0, "sources": "[]",
    }  # fmt: skip


def event_row(request_id: str, event_id: str, kind: str, value: float | None, ts: float, team: str = "team-a",
              app: str = "help", comment: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {"request_id": request_id, "event_id": event_id, "ts": ts, "subject": "ann", "team": team, "app": app,
            "experiment": None, "variant": None, "kind": kind, "value": value, "comment": comment}  # fmt: skip


# -- roll-ups ------------------------------------------------------------------------------------------------------


async def test_roll_ups_raced_by_two_processes_hold_every_hour_once(database_url: str) -> None:
    one, two = await open_store(database_url), await open_store(database_url)
    try:
        t0 = math.floor(1_700_000_000 / HOUR) * HOUR
        rows = [
            request_row(ts=t0 + h * HOUR + i * 600, team=f"team-{'ab'[i % 2]}", model=f"m{i % 3}", key_id=f"k{i % 2}",
                        cost_usd=0.25 * (i + 1), latency_ms=40.0 * i, status=500 if i == 4 else 200)
            for h in range(100) for i in range(6)
        ]  # fmt: skip
        answers = [answer_row(r["id"], r["team"], "help", r["ts"]) for r in rows[::3]]
        await one.write_requests(rows, answers=answers)
        for step in range(1, 10):  # the clock moves 13 hours a step: both processes roll the same new hours
            now = t0 + step * 13 * HOUR + LAG_SECONDS
            await asyncio.gather(*(roll_up(store.engine, now) for store in (one, two, two, one)))
        assert await rolled_until(one.engine) == t0 + 117 * HOUR  # every hour of the log, complete

        def hour(ts: float) -> float:
            return math.floor(ts / HOUR) * HOUR

        expected: Counter[tuple[Any, ...]] = Counter()
        for r in rows:
            expected[("requests", hour(r["ts"]), r["team"], r["model"])] += 1
            expected[("keys", hour(r["ts"]), r["key_id"])] += 1
        for a in answers:
            expected[("apps", hour(a["ts"]), a["team"], a["app"])] += 1
        cost = sum(r["cost_usd"] for r in rows)
        async with one.engine.connect() as conn:
            r, k, a = ui_rollup_requests.c, ui_rollup_keys.c, ui_rollup_apps.c
            found: Counter[tuple[Any, ...]] = Counter()
            for row in (await conn.execute(sa.select(r.hour, r.team, r.model, r.requests))).all():
                found[("requests", *row[:3])] += row[3]
            for row in (await conn.execute(sa.select(k.hour, k.key_id, k.requests))).all():
                found[("keys", *row[:2])] += row[2]
            for row in (await conn.execute(sa.select(a.hour, a.team, a.app, a.responses))).all():
                found[("apps", *row[:3])] += row[3]
            groups = (await conn.execute(sa.select(sa.func.count()).select_from(ui_rollup_requests))).scalar()
            rolled_cost = (await conn.execute(sa.select(sa.func.sum(r.cost_usd)))).scalar()
            errors = (await conn.execute(sa.select(sa.func.sum(r.server_errors)))).scalar()
            slow = (await conn.execute(sa.select(sa.func.sum(r.le_4)))).scalar()  # at or below 100 ms
    finally:
        await one.close()
        await two.close()
    assert found == expected
    assert groups == 100 * 6  # one row per hour, team and model: no process added its rows twice
    assert rolled_cost == pytest.approx(cost) and errors == 100
    assert slow == 100 * 3  # latencies 0, 40 and 80 ms


def test_two_gateways_rolling_up_at_once_show_the_raw_log(storage: dict[str, Any], make_gateway: Any,
                                                          open_ui: Any) -> None:  # fmt: skip
    first, second = (make_gateway({**CONFIG, **storage}) for _ in range(2))
    key = first.create_key("team-a", budget_usd=1000.0, budget_period="total").split("-")[2]
    now = time.time()
    rows = [request_row(ts=now - h * 1800 - 60, key_id=key, cost_usd=0.25) for h in range(120)]  # 60 hours back
    seed(first, rows)
    admins = [open_ui(gw, ADMIN_KEY) for gw in (first, second)]

    def overview(ui: UiClient) -> str:
        page = ui.get("/ui/", range="7d")
        assert page.status_code == 200, page.text
        return page.text

    with ThreadPoolExecutor(8) as pool:  # both gateways roll the same hours up at the same time
        pages = list(pool.map(overview, admins * 4))
    for page in [*pages, *map(overview, admins)]:
        assert (card(page, "Requests"), card(page, "Cost")) == ("120", "$30.0000")
    for ui in admins:
        assert "$30.0000 of $1,000.00 (3%)" in ui.get("/ui/keys").text

    async def rolled() -> tuple[int, float]:
        async with first.gateway.store.engine.connect() as conn:
            total = (await conn.execute(sa.select(sa.func.sum(ui_rollup_keys.c.requests)))).scalar()
        return int(total or 0), await rolled_until(first.gateway.store.engine) or 0.0

    total, until = first.run(rolled())
    assert total == sum(1 for r in rows if r["ts"] < until) >= 100


# -- pages with data ----------------------------------------------------------------------------------------------


def test_guardrails_page_counts_findings_and_blocks_of_the_viewers_team(gw: RunningGateway, open_ui: Any) -> None:
    blocked = [request_row(status=403, error_code="guard_blocked") for _ in range(3)]
    redacted = request_row()
    theirs = request_row(team="team-b", status=403, error_code="guard_blocked")
    findings = [finding_row(r["id"]) for r in blocked]
    findings += [finding_row(redacted["id"], stage="output", detector="pii", label="EMAIL", action="redact")] * 2
    findings += [finding_row(theirs["id"], team="team-b", detector="secrets", label="aws_access_key")]
    seed(gw, [*blocked, redacted, theirs], findings)

    admin = open_ui(gw, ADMIN_KEY).get("/ui/guardrails", range="1h").text
    assert cells(admin, "Detector") == [["injection", "block", "3"], ["pii", "redact", "2"], ["secrets", "block", "1"]]
    assert len(cells(admin, "Time (UTC)")) == 4 and "secrets: aws_access_key" in admin
    member = open_ui(gw, gw.create_key("team-a")).get("/ui/guardrails", range="1h").text
    assert cells(member, "Detector") == [["injection", "block", "3"], ["pii", "redact", "2"]]
    assert sorted(row[1] for row in cells(member, "Time (UTC)")) == sorted(r["id"] for r in blocked)
    assert "aws_access_key" not in member and theirs["id"] not in member


def test_knowledge_pages_show_versions_and_only_what_a_member_may_read(gw: RunningGateway, open_ui: Any,
                                                                        tmp_path: Path) -> None:  # fmt: skip
    corpus = write_corpus(tmp_path / "corpus")
    load_kb(gw.settings, "handbook", corpus)
    leave = corpus / "handbook" / "leave.md"
    leave.write_text(leave.read_text().replace("25 days", "30 days"))
    load_kb(gw.settings, "handbook", corpus)

    admin = open_ui(gw, ADMIN_KEY)
    [kb] = cells(admin.get("/ui/knowledge").text, "Knowledge base")
    assert (kb[0], kb[2], kb[4]) == ("handbook", "4", "0")
    documents = cells(admin.get("/ui/knowledge/handbook").text, "Document")
    assert [(d[0], d[1]) for d in documents] == [("finance/merger.md", "1"), ("handbook/expenses.md", "1"),
                                                 ("handbook/leave.md", "2"), ("hr/salaries.md", "1")]  # fmt: skip
    versions = cells(admin.get("/ui/knowledge/handbook/document", id="handbook/leave.md").text, "Version")
    assert [(v[0], v[6]) for v in versions] == [("2", "active"), ("1", "retired")]

    bob = open_ui(gw, token("bob", ["staff"]))
    [kb] = cells(bob.get("/ui/knowledge").text, "Knowledge base")
    assert (kb[0], kb[2], kb[3]) == ("handbook", "2", "—")  # chunk counts are for admins
    page = bob.get("/ui/knowledge/handbook").text
    assert [d[0] for d in cells(page, "Document")] == ["handbook/expenses.md", "handbook/leave.md"]
    assert "salaries" not in page and "merger" not in page  # neither listed nor in the history
    assert bob.get("/ui/knowledge/handbook/document", id="hr/salaries.md").status_code == 404
    assert len(cells(bob.get("/ui/knowledge/handbook/document", id="handbook/leave.md").text, "Version")) == 2


def test_feedback_page_rates_apps_and_pages_comments_within_the_team(gw: RunningGateway, open_ui: Any) -> None:
    now = time.time()
    answers = [answer_row(f"a{i}", "team-a", "help", now - 600) for i in range(10)]
    gw.run(gw.gateway.store.write_requests([], answers=[*answers, answer_row("b0", "team-b", "hr", now - 600)]))
    events = [event_row(f"a{i}", f"up{i}", "thumbs", 1.0, now - 500) for i in range(6)]
    events += [event_row(f"a{i}", f"down{i}", "thumbs", 0.0, now - 500) for i in (6, 7)]
    events += [event_row("a0", "copy", "copy", None, now - 500), event_row("a1", "s1", "score", 4.0, now - 500),
               event_row("a2", "s2", "score", 5.0, now - 500)]  # fmt: skip
    events += [event_row(f"a{i % 10}", f"c{i}", "regenerate", None, now - 400 + i, comment=f"comment {i:02d}")
               for i in range(60)]  # fmt: skip
    events += [event_row("b0", f"b{i}", "share", None, now - 300, "team-b", "hr", f"theirs {i}") for i in range(3)]
    gw.run(FeedbackStore(gw.gateway.store.engine).add_events(events))

    help_row = ["help", "10", "6 / 2", "75.0%", "80.0%", "1", "4.50 (2)", "60"]
    admin = open_ui(gw, ADMIN_KEY).get("/ui/feedback").text
    assert cells(admin, "App") == [help_row, ["hr", "1", "0 / 0", "—", "0.0%", "0", "—", "3"]]
    assert "theirs 2" in admin

    member = open_ui(gw, gw.create_key("team-a"))
    first = member.get("/ui/feedback").text
    assert cells(first, "App") == [help_row]
    older = re.search(r'href="(/ui/feedback\?[^"]+)">Older comments', first)
    assert older is not None
    second = member.http.get(html.unescape(older.group(1))).text
    shown = [row[4] for row in cells(first, "Time (UTC)") + cells(second, "Time (UTC)")]
    assert shown == [f"comment {i:02d}" for i in reversed(range(60))]  # newest first, none twice, none missing
    assert "Older comments" not in second and "theirs" not in first + second


RAG_APP = {
    "rag": {"embeddings": "none", "on_suspicious": "mark"},
    "apps": {"hr": {"knowledge_bases": ["handbook"], "top_k": 6, "guard_profile": "rag"}},
    "guard": {"profiles": {"rag": {"context": [{"detector": "injection", "action": "block"}]}}},
}


def test_trace_lists_retrieved_chunks_with_their_access_lists(
    storage: dict[str, Any], make_gateway: Any, open_ui: Any, sdk: Any, tmp_path: Path
) -> None:
    gw = make_gateway({**CONFIG, **storage, **RAG_APP})
    folder = write_corpus(tmp_path / "corpus", {**DOCS, "it/wifi.md": POISON})

    async def ingest() -> None:
        await gw.gateway.kbs.create("handbook")
        await gw.gateway.kbs.ingest("handbook", scan_source(folder), source=str(folder))

    gw.run(ingest())
    bob = token("bob", ["staff"])
    answer = sdk(gw, bob).chat.completions.create(model="app/hr", messages=[
        {"role": "user", "content": "What is the office wifi network called, and how many days of annual leave?"}
    ])  # fmt: skip
    request_id = answer.id.removeprefix("chatcmpl-")
    retrieval = answer.model_extra["gengate"]["retrieval"]
    gw.run(gw.gateway.traces.flush())

    page = open_ui(gw, ADMIN_KEY).get(f"/ui/requests/{request_id}").text
    chunks = cells(page, "Rank")
    assert len(chunks) == retrieval["retrieved"] >= 2
    assert [int(c[0]) for c in chunks] == list(range(1, len(chunks) + 1))
    scores = [float(c[6]) for c in chunks]
    assert scores == sorted(scores, reverse=True)
    by_doc = {(c[2], c[7], c[8]) for c in chunks}
    assert ("it/wifi.md", "group:staff", "dropped by the context guard") in by_doc  # the injection never got through
    assert ("handbook/leave.md", "group:staff", "used") in by_doc
    assert sum(c[8] != "used" for c in chunks) == retrieval["dropped_by_guard"] == 1
    # Only what bob may read was retrieved: hr and finance documents never appear, not even as names.
    assert {c[2] for c in chunks} <= {"it/wifi.md", "handbook/leave.md", "handbook/expenses.md"}
    assert "Annual leave policy" in page  # the document's title, never the chunk's text
    stored = json.dumps(gw.run(gw.gateway.store.steps_for(request_id)))
    assert "StaffNet" not in stored and "25 days" not in stored and "previous instructions" not in stored
    assert "No chunk was retrieved." in open_ui(gw, ADMIN_KEY).get(f"/ui/requests/{_plain_call(gw)}").text


def _plain_call(gw: RunningGateway) -> str:
    """A model call without an app: its trace has no retrieval."""
    headers = {"authorization": f"Bearer {gw.create_key('team-a')}"}
    resp = httpx.post(f"{gw.url}/v1/chat/completions", headers=headers, timeout=30,
                      json={"model": "offline", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert resp.status_code == 200, resp.text
    gw.run(gw.gateway.traces.flush())
    return str(resp.headers["x-request-id"])


def test_request_log_pages_a_filtered_search_by_keyset(gw: RunningGateway, open_ui: Any) -> None:
    key = gw.create_key("team-a").split("-")[2]
    now = time.time()
    mine = [request_row(ts=now - i, key_id=key, id=f"k{i:03d}") for i in range(70)]
    mine += [request_row(ts=now - 30, key_id=key, id=f"k-tie{i}") for i in range(3)]
    theirs = [request_row(ts=now - i - 0.5, team="team-b", id=f"b{i:03d}", status=500) for i in range(60)]
    seed(gw, mine + theirs)
    ui = open_ui(gw, ADMIN_KEY)
    by_key = walk(ui, f"/ui/requests?key={key}")
    when = {r["id"]: r["ts"] for r in mine}
    assert sorted(by_key) == sorted(when)  # every one, once
    assert [when[i] for i in by_key] == sorted(when.values(), reverse=True)
    assert walk(ui, "/ui/requests?team=team-b&status=errors") == [r["id"] for r in theirs]
    assert walk(ui, "/ui/requests?team=team-b&status=ok") == []
    member = open_ui(gw, gw.create_key("team-a"))
    assert set(walk(member, "/ui/requests?team=team-b")) == {r["id"] for r in mine}  # the team filter is forced


def test_a_clients_unstorable_text_does_not_hold_up_the_request_log(storage: dict[str, Any], make_gateway: Any,
                                                                     open_ui: Any) -> None:  # fmt: skip
    gw = make_gateway({**UI, **storage, "apps": {"open": {"knowledge_bases": [], "payloads": "full"}}})
    headers = {"authorization": f"Bearer {gw.create_key('team-a')}"}
    with httpx.Client(base_url=gw.url, headers=headers, timeout=30) as client:
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        unknown = client.post("/v1/chat/completions", json={**chat, "model": "m" * 300})  # logged as asked
        nul = client.post("/v1/apps/open/ask", json={"question": "where\u0000is it?"})  # kept: payloads full
        fine = client.post("/v1/chat/completions", json={**chat, "model": "offline"})
    assert (unknown.status_code, nul.status_code, fine.status_code) == (404, 200, 200)
    gw.run(gw.gateway.traces.flush())  # raises when the database refuses the batch
    ui = open_ui(gw, ADMIN_KEY)
    log = ui.get("/ui/requests").text
    for resp in (unknown, nul, fine):
        assert resp.headers["x-request-id"] in log
    trace = ui.get(f"/ui/requests/{unknown.headers['x-request-id']}").text
    assert "m" * 200 in trace and "m" * 201 not in trace  # cut to the column, on both databases
    assert "where\ufffdis it?" in ui.get(f"/ui/requests/{nul.json()['id']}").text
