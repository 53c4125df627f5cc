"""Feedback over HTTP: people rate the answers they received — only their own, each event once, durably, on SQLite
and PostgreSQL — and everything malformed gets a clear 4xx in OpenAI's shape. The browser snippet is run in Node
against the gateway, and in Chromium from a page on another origin (CORS)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import ADMIN_KEY, RunningGateway, require
from gengate.errors import ConfigError
from gengate.outer.feedback import owns
from gengate.settings import FeedbackSettings, Settings, load_settings
from gengate.store.db import open_store
from gengate.store.feedback import FeedbackStore, ResponseRef, VariantStats
from gengate.types import Principal
from rag_corpus import JWT_AUTH, token

APPS = {
    "apps": {
        "support": {"knowledge_bases": [], "payloads": "redacted"},
        "vault": {"knowledge_bases": [], "payloads": "none"},
        "open": {"knowledge_bases": [], "payloads": "full"},
    }
}
HARNESS = Path(__file__).parent / "js" / "feedback_harness.mjs"


def auth(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


def ask(gw: RunningGateway, credential: str, app: str = "support", question: str = "How do I reset it?") -> str:
    """Ask an app; the ask endpoint's `id` is the answer's request id."""
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        resp = client.post(f"/v1/apps/{app}/ask", json={"question": question}, headers=auth(credential))
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def send(gw: RunningGateway, credential: str, body: Any, origin: str | None = None) -> httpx.Response:
    headers = {**auth(credential), **({"origin": origin} if origin is not None else {})}
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        if isinstance(body, bytes):
            return client.post("/v1/feedback", content=body, headers=headers)
        return client.post("/v1/feedback", json=body, headers=headers)


def event(response_id: str, kind: str = "thumbs", value: Any = "up", **extra: Any) -> dict[str, Any]:
    body = {"response_id": response_id, "event_id": extra.pop("event_id", uuid.uuid4().hex), "kind": kind, **extra}
    if value is not None:
        body["value"] = value
    return body


def stored(gw: RunningGateway, request_id: str) -> list[dict[str, Any]]:
    return list(gw.run(gw.gateway.feedback.store.events_for(request_id)))


@pytest.fixture
def fb(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return make_gateway({**JWT_AUTH, **APPS})


@pytest.fixture
def fb_db(storage: dict[str, Any], make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    """The same gateway on SQLite and on PostgreSQL, for what the database decides (uniqueness, latest wins)."""
    return make_gateway({**JWT_AUTH, **APPS, **storage})


# -- capture ---------------------------------------------------------------------------------------------------


def test_thumbs_on_a_chat_answer_is_stored_with_the_answers_app_and_team(fb_db: RunningGateway, sdk) -> None:
    key = fb_db.create_key("team-a")
    answer = sdk(fb_db, key).chat.completions.create(model="app/support", messages=[{"role": "user", "content": "hi"}])
    assert answer.id.startswith("chatcmpl-")
    resp = send(fb_db, key, event(answer.id, value="up", event_id="e-1"))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"object": "feedback.event", "response_id": answer.id, "event_id": "e-1", "duplicate": False}
    [row] = stored(fb_db, answer.id.removeprefix("chatcmpl-"))
    assert (row["kind"], row["value"], row["app"], row["team"]) == ("thumbs", 1.0, "support", "team-a")
    assert row["subject"].startswith("key:")


@pytest.mark.parametrize(
    ("kind", "value", "kept"),
    [("thumbs", "down", 0.0), ("thumbs", True, 1.0), ("thumbs", 0, 0.0), ("score", 4.5, 4.5), ("score", 1, 1.0),
     ("copy", None, None), ("regenerate", None, None), ("share", None, None)],
)  # fmt: skip
def test_every_kind_is_accepted_on_a_bare_request_id(fb: RunningGateway, kind: str, value: Any, kept: Any) -> None:
    key = fb.create_key("team-a")
    request_id = ask(fb, key)
    resp = send(fb, key, event(request_id, kind, value))
    assert resp.status_code == 200, resp.text
    [row] = stored(fb, request_id)
    assert (row["kind"], row["value"]) == (kind, kept)


def test_repeated_event_id_is_acknowledged_as_a_duplicate_and_stored_once(fb_db: RunningGateway) -> None:
    key = fb_db.create_key("team-a")
    request_id = ask(fb_db, key)
    body = event(request_id, event_id="same-id")
    first, second, third = (send(fb_db, key, body) for _ in range(3))
    assert [r.json()["duplicate"] for r in (first, second, third)] == [False, True, True]
    assert len(stored(fb_db, request_id)) == 1


def test_concurrent_retries_of_one_event_store_it_exactly_once(fb_db: RunningGateway) -> None:
    key = fb_db.create_key("team-a")
    request_id = ask(fb_db, key)
    body = event(request_id, event_id="racing")

    async def fire() -> list[bool]:
        async with httpx.AsyncClient(base_url=fb_db.url, headers=auth(key), timeout=30) as client:
            answers = await asyncio.gather(*(client.post("/v1/feedback", json=body) for _ in range(20)))
        assert all(a.status_code == 200 for a in answers)
        return [a.json()["duplicate"] for a in answers]

    duplicates = asyncio.run(fire())
    assert duplicates.count(False) == 1
    assert len(stored(fb_db, request_id)) == 1


def test_one_event_raced_through_two_gateways_on_one_database_is_stored_once(storage, make_gateway) -> None:
    first, second = (make_gateway({**JWT_AUTH, **APPS, **storage}) for _ in range(2))
    key = first.create_key("team-a")
    request_id = ask(first, key)
    first.run(first.gateway.traces.flush())  # written, so that the other gateway finds the answer too
    body = event(request_id, "score", 4, event_id="two-doors")

    async def fire() -> list[bool]:
        async with httpx.AsyncClient(headers=auth(key), timeout=30) as client:
            answers = await asyncio.gather(
                *(client.post(f"{gw.url}/v1/feedback", json=body) for _ in range(10) for gw in (first, second))
            )
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        return [a.json()["duplicate"] for a in answers]

    assert asyncio.run(fire()).count(False) == 1
    [row] = stored(second, request_id)
    assert (row["event_id"], row["value"]) == ("two-doors", 4.0)


def test_feedback_on_an_answer_still_in_the_trace_queue_is_accepted(make_gateway) -> None:
    gw = make_gateway({**APPS, "storage": {"log_flush_seconds": 60, "log_batch_size": 10_000}})
    key = gw.create_key("team-a")
    request_id = ask(gw, key)
    assert gw.run(gw.gateway.feedback.store.get_response(request_id)) is None  # not written yet
    resp = send(gw, key, event(request_id, "score", 5))
    assert resp.status_code == 200, resp.text
    [row] = stored(gw, request_id)
    assert (row["app"], row["value"]) == ("support", 5.0)
    gw.run(gw.gateway.traces.flush())
    assert gw.run(gw.gateway.feedback.store.get_response(request_id)) is not None


def test_same_person_with_another_token_may_rate_their_answer(fb: RunningGateway) -> None:
    request_id = ask(fb, token("bob", ["staff"]))
    resp = send(fb, token("bob", ["staff"], team="other-team"), event(request_id, value="down"))
    assert resp.status_code == 200, resp.text
    assert stored(fb, request_id)[0]["subject"] == "bob"


def key_id_of(key: str) -> str:
    return key.split("-")[2]  # sk-gg-<id>-<secret>


def test_someone_elses_answer_and_an_unknown_one_are_the_same_404(fb: RunningGateway) -> None:
    owner = fb.create_key("team-a")
    own_id = ask(fb, owner)
    colleague = fb.create_key("team-a")
    foreign = send(fb, colleague, event(own_id))
    unknown = send(fb, colleague, event("chatcmpl-" + uuid.uuid4().hex))
    as_admin = send(fb, ADMIN_KEY, event(own_id))  # admins give feedback as themselves, never as someone else
    lookalike = send(fb, token(f"key:{key_id_of(owner)}", ["staff"]), event(own_id))  # a token named like the key
    for resp in (foreign, unknown, as_admin, lookalike):
        assert resp.status_code == 404, resp.text
        assert resp.json()["error"]["code"] == "response_not_found"
        assert resp.json()["error"]["type"] == "invalid_request_error"
    assert foreign.json()["error"]["message"] == unknown.json()["error"]["message"]
    assert stored(fb, own_id) == []


def test_answers_older_than_accept_days_are_refused(make_gateway) -> None:
    gw = make_gateway({**APPS, "feedback": {"accept_days": 1}})
    key = gw.create_key("team-a")
    key_id = key_id_of(key)
    old = {
        "request_id": "old-answer", "ts": time.time() - 2 * 86400, "app": "support", "model": "app/support",
        "subject": f"key:{key_id}", "team": "team-a", "key_id": key_id, "experiment": None, "variant": None,
        "outcome": "answered", "question": None, "answer": None, "payload": "none", "cost_usd": 0.0,
        "latency_ms": 1.0, "findings": 0, "sources": "[]",
    }  # fmt: skip
    gw.run(gw.gateway.store.write_requests([], answers=[old]))
    resp = send(gw, key, event("old-answer"))
    assert resp.status_code == 409, resp.text
    assert resp.json()["error"]["code"] == "feedback_window_closed"
    assert stored(gw, "old-answer") == []


def test_latest_thumbs_of_a_person_wins_in_aggregates(fb_db: RunningGateway) -> None:
    key = fb_db.create_key("team-a")
    changed, kept = ask(fb_db, key), ask(fb_db, key)
    for body in (event(changed, value="up"), event(changed, value="down"), event(kept, value="up")):
        assert send(fb_db, key, body).status_code == 200
    [summary] = fb_db.run(fb_db.gateway.feedback.store.summary(app="support"))
    assert (summary.responses, summary.thumbs_up, summary.thumbs_down) == (2, 1, 1)
    assert len(stored(fb_db, changed)) == 2  # both events are kept; only the aggregate takes the latest


@pytest.mark.parametrize(
    ("app", "kept"),
    [
        ("open", "Wrong, mail me at jane.doe@example.com"),
        ("support", "Wrong, mail me at [PII_EMAIL]"),
        ("vault", None),
    ],
)
def test_comment_is_kept_as_the_apps_payload_setting_says(fb: RunningGateway, app: str, kept: str | None) -> None:
    key = fb.create_key("team-a")
    request_id = ask(fb, key, app=app)
    resp = send(fb, key, event(request_id, value="down", comment="Wrong, mail me at jane.doe@example.com"))
    assert resp.status_code == 200, resp.text
    assert stored(fb, request_id)[0]["comment"] == kept


def test_batch_answers_each_event_with_its_own_status(fb_db: RunningGateway) -> None:
    key = fb_db.create_key("team-a")
    own = ask(fb_db, key)
    foreign = ask(fb_db, fb_db.create_key("team-b"))
    send(fb_db, key, event(own, "copy", None, event_id="sent-before"))
    batch = {
        "events": [
            event(own, value="up", event_id="a"),
            event(own, "vote", event_id="b"),
            event(foreign, event_id="c"),
            event(own, "copy", None, event_id="sent-before"),
            {"response_id": own, "kind": "share"},
        ]
    }
    resp = send(fb_db, key, batch)
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert [d["status"] for d in data] == [200, 400, 404, 200, 400]
    assert [d.get("duplicate") for d in data] == [False, None, None, True, None]
    assert data[1]["error"]["param"] == "kind" and data[4]["error"]["param"] == "event_id"
    assert data[2]["event_id"] == "c" and data[4]["event_id"] is None
    assert sorted(r["event_id"] for r in stored(fb_db, own)) == ["a", "sent-before"]
    assert stored(fb_db, foreign) == []


# -- bad input ---------------------------------------------------------------------------------------------------

BAD = [
    (b"{not json", 400, None),
    (b"", 400, None),
    (b"[1, 2]", 400, None),
    ({"event_id": "x", "kind": "thumbs", "value": "up"}, 400, "response_id"),
    ({"response_id": 42, "event_id": "x", "kind": "thumbs", "value": "up"}, 400, "response_id"),
    ({"response_id": "r", "kind": "thumbs", "value": "up"}, 400, "event_id"),
    ({"response_id": "r", "event_id": "", "kind": "thumbs", "value": "up"}, 400, "event_id"),
    ({"response_id": "r", "event_id": "x" * 129, "kind": "thumbs", "value": "up"}, 400, "event_id"),
    ({"response_id": "r", "event_id": 7, "kind": "thumbs", "value": "up"}, 400, "event_id"),
    ({"response_id": "r", "event_id": "x", "kind": "like"}, 400, "kind"),
    ({"response_id": "r", "event_id": "x", "kind": ["thumbs"]}, 400, "kind"),
    ({"response_id": "r", "event_id": "x", "kind": "thumbs"}, 400, "value"),
    ({"response_id": "r", "event_id": "x", "kind": "thumbs", "value": "maybe"}, 400, "value"),
    ({"response_id": "r", "event_id": "x", "kind": "thumbs", "value": 2}, 400, "value"),
    ({"response_id": "r", "event_id": "x", "kind": "score", "value": 6}, 400, "value"),
    ({"response_id": "r", "event_id": "x", "kind": "score", "value": True}, 400, "value"),
    ({"response_id": "r", "event_id": "x", "kind": "score", "value": "5"}, 400, "value"),
    ({"response_id": "r", "event_id": "x", "kind": "copy", "value": 1}, 400, "value"),
    ({"response_id": "r", "event_id": "x", "kind": "copy", "comment": 5}, 400, "comment"),
    ({"response_id": "r", "event_id": "x", "kind": "copy", "comment": "c" * 2001}, 400, "comment"),
    ({"response_id": "r", "event_id": "x", "kind": "copy", "rating": 5}, 400, "rating"),
    ({"events": []}, 400, "events"),
    ({"events": "all"}, 400, "events"),
    ({"events": [{"kind": "copy"}] * 101}, 400, "events"),
    ({"events": [], "response_id": "r"}, 400, "events"),
    ({"response_id": "r\u0000", "event_id": "x", "kind": "copy"}, 400, "response_id"),  # PostgreSQL stores no NUL
    ({"response_id": "r", "event_id": "x\u0000", "kind": "copy"}, 400, "event_id"),
    ({"response_id": "r", "event_id": "x", "kind": "copy", "comment": "a\u0000b"}, 400, "comment"),
    ({"response_id": "chatcmpl-" + "f" * 32, "event_id": "x", "kind": "copy"}, 404, "response_id"),
    ({"response_id": "../../etc/passwd", "event_id": "x", "kind": "copy"}, 404, "response_id"),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD)
def test_malformed_feedback_gets_a_clear_error_in_openai_shape(fb: RunningGateway, body: Any, status: int,
                                                               param: str | None) -> None:  # fmt: skip
    key = fb.create_key("team-a")
    resp = send(fb, key, body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_feedback_needs_credentials(fb: RunningGateway) -> None:
    with httpx.Client(base_url=fb.url, timeout=30) as client:
        resp = client.post("/v1/feedback", json=event("r"))
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def counters(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "local":
        return {}
    return {"redis": {"url": request.getfixturevalue("redis_url"), "prefix": request.getfixturevalue("redis_prefix")}}


def test_flood_is_refused_with_429_and_retry_after(make_gateway, counters: dict[str, Any]) -> None:
    gw = make_gateway({**APPS, **counters, "feedback": {"rate_per_minute": 4}})
    key = gw.create_key("team-a")
    request_id = ask(gw, key)
    assert [send(gw, key, event(request_id, "copy", None)).status_code for _ in range(3)] == [200] * 3
    batch = send(gw, key, {"events": [event(request_id, "copy", None) for _ in range(3)]})
    assert batch.status_code == 200
    assert [d["status"] for d in batch.json()["data"]] == [200, 429, 429]
    assert int(batch.headers["retry-after"]) >= 1
    refused = send(gw, key, event(request_id, "copy", None))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert len(stored(gw, request_id)) == 4
    other = gw.create_key("team-a")  # the limit is per caller
    assert send(gw, other, event(ask(gw, other), "copy", None)).status_code == 200


# -- durability --------------------------------------------------------------------------------------------------


def test_every_acknowledged_event_survives_a_restart_mid_flood(storage: dict[str, Any], make_gateway) -> None:
    gw = make_gateway({**APPS, **storage, "feedback": {"rate_per_minute": 100_000}})
    key = gw.create_key("team-a")
    answers = [ask(gw, key) for _ in range(5)]
    events = [event(answers[i % 5], "copy", None, event_id=f"ev-{i}") for i in range(1200)]
    acknowledged: list[str] = []

    async def flood() -> None:
        queue = list(events)

        async def worker(client: httpx.AsyncClient) -> None:
            while queue:
                body = queue.pop()
                try:
                    resp = await client.post("/v1/feedback", json=body)
                except httpx.TransportError:
                    continue  # the gateway went away: this one was never acknowledged
                if resp.status_code == 200:
                    acknowledged.append(body["event_id"])
                if len(acknowledged) == 100:
                    asyncio.get_running_loop().run_in_executor(None, gw.stop)

        async with httpx.AsyncClient(base_url=gw.url, headers=auth(key), timeout=30) as client:
            await asyncio.gather(*(worker(client) for _ in range(16)))

    asyncio.run(flood())
    assert 100 <= len(acknowledged) < len(events)
    again = RunningGateway(gw.settings).start()
    try:
        rows = [r for a in answers for r in stored(again, a)]
        assert set(acknowledged) <= {r["event_id"] for r in rows}
        with httpx.Client(base_url=again.url, headers=auth(key), timeout=30) as client:
            resent = [client.post("/v1/feedback", json=body) for body in events]  # the client retries everything
        assert all(r.status_code == 200 for r in resent)
        assert all(r.json()["duplicate"] for r in resent if r.json()["event_id"] in set(acknowledged))
        rows = [r for a in answers for r in stored(again, a)]
        assert sorted(r["event_id"] for r in rows) == sorted(e["event_id"] for e in events)
    finally:
        again.stop()


# -- reads for the outer loop ------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    raw = f"sqlite:///{tmp_path / 'fb.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    return Settings.model_validate({"storage": {"url": raw}}).database_url


def answer_row(request_id: str, variant: str, subject: str, outcome: str = "answered", cost: float = 0.0,
               latency: float = 0.0, ts: float | None = None, app: str = "support") -> dict[str, Any]:  # fmt: skip
    return {
        "request_id": request_id, "ts": ts if ts is not None else time.time(), "app": app, "model": f"app/{app}",
        "subject": subject, "team": "t", "key_id": None, "experiment": "exp", "variant": variant,
        "outcome": outcome, "question": None, "answer": None, "payload": "none", "cost_usd": cost,
        "latency_ms": latency, "findings": 0, "sources": "[]",
    }  # fmt: skip


def feedback_row(request_id: str, event_id: str, kind: str, value: float | None, subject: str, variant: str,
                 ts: float, comment: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {"request_id": request_id, "event_id": event_id, "ts": ts, "subject": subject, "team": "t",
            "app": "support", "experiment": "exp", "variant": variant, "kind": kind, "value": value,
            "comment": comment}  # fmt: skip


async def test_variant_stats_sum_outcomes_votes_copies_cost_and_latency(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        await store.write_requests([], answers=[
            answer_row("a1", "A", "u1", cost=0.5, latency=100), answer_row("a2", "A", "u1", "blocked", 0.25, 300),
            answer_row("a3", "A", "u2", "no_answer", 0.0, 50), answer_row("b1", "B", "u3", cost=1.0, latency=10),
        ])  # fmt: skip
        t = time.time()
        fb = FeedbackStore(store.engine)
        await fb.add_events([
            feedback_row("a1", "1", "thumbs", 1.0, "u1", "A", t),
            feedback_row("a1", "2", "thumbs", 0.0, "u1", "A", t + 1),  # u1 changed their mind: down wins
            feedback_row("a2", "3", "thumbs", 1.0, "u1", "A", t),
            feedback_row("a1", "4", "copy", None, "u1", "A", t),
            feedback_row("a1", "5", "copy", None, "u1", "A", t + 2),  # a second copy of the same answer
            feedback_row("b1", "6", "thumbs", 1.0, "u3", "B", t),
        ])  # fmt: skip
        stats = await fb.variant_stats("exp")
    finally:
        await store.close()
    assert stats["A"] == VariantStats(
        variant="A", responses=3, answered=1, blocked=1, thumbs_up=1, thumbs_down=1, copies=1, users=2,
        cost_sum=0.75, cost_sum_sq=0.3125, latency_sum=450.0, latency_sum_sq=100.0**2 + 300.0**2 + 50.0**2,
    )  # fmt: skip
    assert stats["B"] == VariantStats("B", 1, 1, 0, 1, 0, 0, 1, 1.0, 1.0, 10.0, 100.0)
    assert set(stats) == {"A", "B"}


async def test_summary_means_latest_scores_and_comments_page_newest_first(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        await store.write_requests([], answers=[answer_row("a1", "A", "u1"), answer_row("a2", "A", "u2")])
        t = time.time()
        fb = FeedbackStore(store.engine)
        await fb.add_events([
            feedback_row("a1", "1", "score", 1.0, "u1", "A", t, "first thoughts"),
            feedback_row("a1", "2", "score", 5.0, "u1", "A", t + 1, "better on reflection"),
            feedback_row("a2", "3", "score", 4.0, "u2", "A", t, None),
            feedback_row("a2", "4", "share", None, "u2", "A", t, "sent to my team"),
        ])  # fmt: skip
        [summary] = await fb.summary(experiment="exp")
        first = await fb.comments(app="support", limit=2)
        rest = await fb.comments(app="support", limit=2, before=first[-1].id)
    finally:
        await store.close()
    assert (summary.scores, summary.mean_score, summary.shares, summary.comments) == (2, 4.5, 1, 3)
    assert [c.comment for c in first + rest] == ["sent to my team", "better on reflection", "first thoughts"]


# -- the browser snippet -----------------------------------------------------------------------------------------


def test_snippet_is_served_as_cacheable_javascript(fb: RunningGateway) -> None:
    with httpx.Client(base_url=fb.url, timeout=30) as client:
        resp = client.get("/v1/feedback.js")
        again = client.get("/v1/feedback.js", headers={"if-none-match": resp.headers["etag"]})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "max-age=" in resp.headers["cache-control"] and resp.headers["x-content-type-options"] == "nosniff"
    assert "gengate.feedback" in resp.text or "root.gengate" in resp.text
    assert again.status_code == 304 and again.content == b""


def test_snippet_is_not_served_when_turned_off(make_gateway) -> None:
    gw = make_gateway({"feedback": {"snippet": False}})
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        resp = client.get("/v1/feedback.js")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"


@pytest.fixture
def node() -> Iterator[str]:
    found = shutil.which("node")
    if found is None:
        require("node", "not on PATH")
    assert found is not None
    yield found


def test_snippet_parses_as_javascript(node: str) -> None:
    snippet = Path(__file__).parents[1] / "src" / "gengate" / "outer" / "static" / "feedback.js"
    done = subprocess.run([node, "--check", str(snippet)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_snippet_batches_retries_with_the_same_ids_and_reports_copies(fb: RunningGateway, node: str) -> None:
    key = fb.create_key("team-a")
    own, other = ask(fb, key), ask(fb, key)
    foreign = ask(fb, fb.create_key("team-b"))
    argv = [node, str(HARNESS), fb.url, key, f"chatcmpl-{own}", other, foreign]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["status"] == 200 and out["contentType"].startswith("text/javascript")
    first, second = out["attempts"][:2]
    assert len(first) == 4 and first[:3] == second[:3]  # the lost batch was resent with the same event ids
    assert out["results"]["up"]["duplicate"] is True and out["results"]["down"]["duplicate"] is True
    assert out["results"]["foreign"] == 404
    mine = sorted((r["kind"], r["value"], r["comment"]) for r in stored(fb, own))
    assert mine == [("copy", None, None), ("thumbs", 1.0, "Exactly what I needed")]
    assert [(r["kind"], r["value"]) for r in stored(fb, other)] == [("thumbs", 0.0)]
    assert stored(fb, foreign) == []


# -- pages on other origins (CORS) ---------------------------------------------------------------------------------

INTRANET = "https://intranet.example.com"


def preflight(gw: RunningGateway, origin: str | None) -> httpx.Response:
    """What a browser sends before the snippet's POST from another origin."""
    headers = {"access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type"}
    if origin is not None:
        headers["origin"] = origin
    return httpx.options(f"{gw.url}/v1/feedback", headers=headers, timeout=30)


@pytest.fixture
def cors(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return make_gateway(
        {**APPS, "feedback": {"cors_origins": [INTRANET, "http://LOCALHOST:3000"], "rate_per_minute": 2}}
    )


def test_without_cors_origins_no_cors_header_is_sent(fb: RunningGateway) -> None:
    key = fb.create_key("team-a")
    resp = send(fb, key, event(ask(fb, key)), origin=INTRANET)
    assert resp.status_code == 200, resp.text  # CORS is no access control: the token is
    assert not [h for h in resp.headers if h.startswith("access-control-")]
    refused = preflight(fb, INTRANET)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "origin_not_allowed"
    assert not [h for h in refused.headers if h.startswith("access-control-")]


def test_preflight_from_a_configured_origin_allows_the_snippets_post(cors: RunningGateway) -> None:
    for origin in (INTRANET, "http://localhost:3000"):  # configured as LOCALHOST: browsers send origins lowercased
        resp = preflight(cors, origin)
        assert resp.status_code == 204, resp.text
        assert resp.headers["access-control-allow-origin"] == origin
        assert resp.headers["access-control-allow-methods"] == "POST"
        allowed = {h.strip() for h in resp.headers["access-control-allow-headers"].split(",")}
        assert allowed == {"authorization", "content-type"}
        assert int(resp.headers["access-control-max-age"]) >= 600
        assert resp.headers["vary"].lower() == "origin"
        assert "access-control-allow-credentials" not in resp.headers


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "https://intranet.example.com.evil.example", "http://intranet.example.com",
     "https://intranet.example.com:8443", "null", "*"],
)  # fmt: skip
def test_preflight_from_any_other_origin_gets_no_cors_headers(cors: RunningGateway, origin: str) -> None:
    resp = preflight(cors, origin)
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in resp.headers


def test_options_without_an_origin_just_lists_the_methods(cors: RunningGateway) -> None:
    resp = preflight(cors, None)
    assert resp.status_code == 204 and resp.headers["allow"] == "OPTIONS, POST"
    assert "access-control-allow-origin" not in resp.headers


def test_every_answer_to_a_configured_origin_carries_it_errors_included(cors: RunningGateway) -> None:
    key = cors.create_key("team-a")
    request_id = ask(cors, key)
    answers = {
        200: send(cors, key, event(request_id), origin=INTRANET),
        401: httpx.post(f"{cors.url}/v1/feedback", json=event(request_id), headers={"origin": INTRANET}),
        404: send(cors, key, event("no-such-answer"), origin=INTRANET),
        429: send(cors, key, event(request_id), origin=INTRANET),  # rate_per_minute is 2
    }
    for status, resp in answers.items():
        assert resp.status_code == status, resp.text
        assert resp.headers["access-control-allow-origin"] == INTRANET
        assert {h.strip() for h in resp.headers["access-control-expose-headers"].split(",")} >= {"retry-after"}
        assert resp.headers["vary"].lower() == "origin"
        assert "access-control-allow-credentials" not in resp.headers
    other = cors.create_key("team-a")
    elsewhere = send(cors, other, event(ask(cors, other)), origin="https://evil.example")
    assert elsewhere.status_code == 200 and "access-control-allow-origin" not in elsewhere.headers


@pytest.mark.parametrize(
    "origin",
    ["*", "https://*.example.com", "https://intranet.example.com/", "https://intranet.example.com/app",
     "intranet.example.com", "null", "ftp://intranet.example.com", "https://intranet.example.com\n"],
)  # fmt: skip
def test_cors_origins_must_be_exact_origins(origin: str, tmp_path: Path) -> None:
    path = tmp_path / "gengate.yaml"
    path.write_text(yaml.safe_dump({"feedback": {"cors_origins": [origin]}}))
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert "feedback.cors_origins" in err.value.message


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's headless Chromium through Playwright (never `playwright install`)."""
    executable = os.environ.get("GENGATE_CHROMIUM", "/usr/bin/chromium")
    if not os.path.exists(executable):
        require("Chromium", f"{executable} is missing (apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require("Playwright", "pip install -e '.[dev]'")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def web_pages() -> Iterator[tuple[int, dict[str, str]]]:
    """A plain HTTP server on loopback serving the HTML in the returned dict by path (another origin)."""
    pages: dict[str, str] = {}

    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1]), pages
    server.shutdown()
    server.server_close()


def test_snippet_on_a_page_of_a_configured_origin_sends_feedback_in_a_real_browser(
    make_gateway: Callable[..., RunningGateway], chromium: Any, web_pages: tuple[int, dict[str, str]]
) -> None:
    port, pages = web_pages
    intranet = f"http://localhost:{port}"  # the gateway is http://127.0.0.1:<its port>: another origin
    gw = make_gateway({**APPS, "feedback": {"cors_origins": [intranet]}})
    key = gw.create_key("team-a")
    request_id = ask(gw, key)
    pages["/"] = (
        f'<!doctype html><script src="{gw.url}/v1/feedback.js"></script><script>'
        f'gengate.feedback.init({{endpoint: "{gw.url}/v1/feedback", token: {json.dumps(key)}, delayMs: 5}});'
        f"gengate.feedback.thumbs({json.dumps(request_id)}, true, 'from the intranet')"
        ".then((r) => { window.outcome = r; }, (e) => { window.outcome = {error: String(e.status || e)}; });"
        "</script>"
    )
    body = json.dumps(event(request_id, "copy", None))
    pages["/elsewhere"] = (
        f'<!doctype html><script>fetch("{gw.url}/v1/feedback", {{method: "POST", body: {json.dumps(body)}, '
        f'headers: {{"content-type": "application/json", authorization: "Bearer {key}"}}}})'
        '.then((r) => { window.outcome = r.status; }, () => { window.outcome = "blocked"; });</script>'
    )
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(f"{intranet}/")
        page.wait_for_function("window.outcome !== undefined", timeout=20_000)
        outcome = page.evaluate("window.outcome")
        assert outcome.get("status") == 200 and outcome["duplicate"] is False, outcome
        other = context.new_page()
        other.goto(f"http://127.0.0.1:{port}/elsewhere")  # the same page server, an origin not configured
        other.wait_for_function("window.outcome !== undefined", timeout=20_000)
        assert other.evaluate("window.outcome") == "blocked"
    finally:
        context.close()
    [row] = stored(gw, request_id)  # the refused preflight kept the browser from sending the copy event
    assert (row["kind"], row["value"], row["comment"]) == ("thumbs", 1.0, "from the intranet")


# -- pure parts --------------------------------------------------------------------------------------------------

ANSWER = ResponseRef("r", 0.0, subject="alice", key_id="k1", team="t", app="a", experiment=None, variant=None,
                     payload="full")  # fmt: skip


@pytest.mark.parametrize(
    ("principal", "ref", "owner"),
    [
        (Principal("alice", "t", key_id="k1"), ANSWER, True),
        (Principal("alice", "t", auth="jwt"), ANSWER, True),  # the same person with a token
        (Principal("key:k2", "t", key_id="k2"), ANSWER, False),
        (Principal("bob", "t", auth="jwt"), ANSWER, False),
        (Principal("admin", "admin", auth="admin", admin=True), ANSWER, False),
        (Principal("key:k1", "t", key_id="k1"), replace(ANSWER, subject="key:k1"), True),
        (Principal("key:k1", "t", auth="jwt"), replace(ANSWER, subject="key:k1"), False),  # a token named like a key
        (Principal("alice", "t", auth="jwt"), replace(ANSWER, subject=None, key_id=None), False),
    ],
)
def test_feedback_is_only_ever_the_callers_own(principal: Principal, ref: ResponseRef, owner: bool) -> None:
    assert owns(principal, ref) is owner


def test_documented_feedback_settings_are_valid() -> None:
    text = (Path(__file__).parents[1] / "docs" / "outer-loop.md").read_text()
    section = text.split("## Feedback", 1)[1].split("\n## ", 1)[0]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    settings = Settings.model_validate(yaml.safe_load(block))
    assert settings.feedback == FeedbackSettings()  # the documented values are the defaults
