"""The dashboard over real HTTP, on SQLite and on PostgreSQL: sign-in and sessions, CSRF, team isolation, keyset
pagination, roll-ups, escaping, planes, and bad input answered with a 4xx page (never a 500)."""

from __future__ import annotations

import hashlib
import json
import re
import time

import httpx
import jwt
import pytest
import sqlalchemy as sa

from conftest import ADMIN_KEY, free_port, merge
from dashboard_helpers import UI, cells, finding_row, request_row, seed
from fake_upstream import Step
from gengate.outer.experiments import spec_from_data
from gengate.store.experiments import ExperimentStore
from gengate.store.schema import ui_sessions

PAGES = ["/ui/", "/ui/requests", "/ui/guardrails", "/ui/knowledge", "/ui/evals", "/ui/experiments", "/ui/feedback",
         "/ui/keys"]  # fmt: skip
SECRET = "jwt-test-secret-that-is-long-enough-0123456789"
JWT = {
    "auth": {
        "jwt_issuers": [{"issuer": "https://idp.test", "audience": "gengate", "algorithm": "HS256", "secret": SECRET}]
    }
}


def _token(**claims: object) -> str:
    base = {"iss": "https://idp.test", "aud": "gengate", "exp": int(time.time()) + 300, "sub": "carol"}
    return jwt.encode({**base, **claims}, SECRET, algorithm="HS256")


@pytest.fixture
def gw(storage, make_gateway):
    """A gateway serving the dashboard, on SQLite and on PostgreSQL."""
    return make_gateway({**UI, **storage})


def test_pages_send_a_visitor_without_a_session_to_sign_in(gw) -> None:
    resp = httpx.get(f"{gw.url}/ui/requests?status=blocked")
    assert resp.status_code == 303
    assert resp.headers["location"] == "/ui/login?next=%2Fui%2Frequests%3Fstatus%3Dblocked"
    assert httpx.post(f"{gw.url}/ui/keys", data={"team": "x"}).status_code == 401


def test_admin_key_signs_in_and_every_page_renders(gw, open_ui) -> None:
    ui = open_ui(gw, ADMIN_KEY)
    for path in PAGES:
        resp = ui.get(path)
        assert resp.status_code == 200, (path, resp.text)
        assert "<h1>" in resp.text and 'href="/ui/keys"' in resp.text
        assert "script-src" not in resp.headers["content-security-policy"]
        assert resp.headers["x-frame-options"] == "DENY"


def test_session_cookie_is_httponly_strict_and_only_its_hash_is_stored(gw, open_ui) -> None:
    ui = open_ui(gw)
    resp = ui.sign_in(ADMIN_KEY)
    cookie = next(c for c in resp.headers.get_list("set-cookie") if c.startswith("gengate_ui="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    session_id = ui.http.cookies["gengate_ui"]

    async def stored() -> list[str]:
        async with gw.gateway.store.engine.connect() as conn:
            return [r[0] for r in (await conn.execute(sa.select(ui_sessions.c.id_hash))).all()]

    assert gw.run(stored()) == [hashlib.sha256(session_id.encode()).hexdigest()]
    assert ADMIN_KEY not in json.dumps(gw.run(stored()))


def test_cookies_are_secure_unless_turned_off(make_gateway) -> None:
    gw = make_gateway()  # ui.cookie_secure defaults to true: httpx will not send them back over plain HTTP
    login = httpx.get(f"{gw.url}/ui/login")
    assert "Secure" in login.headers["set-cookie"]
    token = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
    resp = httpx.post(f"{gw.url}/ui/login", data={"csrf": token, "credential": ADMIN_KEY},
                      headers={"cookie": f"gengate_ui_login={token}"})  # fmt: skip
    assert resp.status_code == 303
    assert "Secure" in next(c for c in resp.headers.get_list("set-cookie") if c.startswith("gengate_ui="))


def test_wrong_credentials_are_refused_without_echoing_them(gw, open_ui) -> None:
    ui = open_ui(gw)
    resp = ui.sign_in("sk-gg-deadbeef-" + "x" * 40)
    assert resp.status_code == 401 and "invalid API key" in resp.text
    assert "x" * 40 not in resp.text
    assert "gengate_ui" not in ui.http.cookies


def test_sign_in_form_needs_its_csrf_cookie(gw) -> None:
    resp = httpx.post(f"{gw.url}/ui/login", data={"credential": ADMIN_KEY, "csrf": "guessed"})
    assert resp.status_code == 403 and "gengate_ui=" not in resp.headers.get("set-cookie", "")


def test_state_changing_forms_reject_a_missing_or_wrong_csrf_token(gw, open_ui) -> None:
    ui = open_ui(gw, ADMIN_KEY)
    assert ui.http.post("/ui/keys", data={"team": "team-x"}).status_code == 403
    assert ui.post("/ui/keys", {"team": "team-x"}, token="0" * 64).status_code == 403
    other = open_ui(gw, ADMIN_KEY)  # another session's token is no good either
    assert ui.post("/ui/keys", {"team": "team-x"}, token=other.csrf()).status_code == 403
    assert gw.run(gw.gateway.store.list_keys(team="team-x")) == []
    created = ui.post("/ui/keys", {"team": "team-x", "name": "ci", "budget_usd": "5", "budget_period": "day"})
    assert created.status_code == 201
    secret = re.search(r'value="(sk-gg-[^"]+)"', created.text)
    assert secret is not None
    keys = gw.run(gw.gateway.store.list_keys(team="team-x"))
    assert [(k.name, k.budget_usd, k.budget_period) for k in keys] == [("ci", 5.0, "day")]
    assert secret.group(1) not in ui.get("/ui/keys").text  # shown once


def test_logout_ends_the_session_for_good(gw, open_ui) -> None:
    ui = open_ui(gw, ADMIN_KEY)
    old = ui.http.cookies["gengate_ui"]
    assert ui.post("/ui/logout").status_code == 303
    replay = httpx.get(f"{gw.url}/ui/", cookies={"gengate_ui": old})
    assert replay.status_code == 303 and replay.headers["location"].startswith("/ui/login")


def test_team_member_sees_only_their_team_and_never_admin_pages(gw, open_ui) -> None:
    key_a = gw.create_key("team-a", name="a-key")
    gw.create_key("team-b", name="b-key")
    mine, theirs = request_row(team="team-a", subject="ann"), request_row(team="team-b", subject="bob")
    seed(gw, [mine, theirs], [finding_row(theirs["id"], team="team-b", label="secret-label-b")])
    ui = open_ui(gw, key_a)
    log = ui.get("/ui/requests").text
    assert mine["id"] in log and theirs["id"] not in log
    assert ui.get(f"/ui/requests/{mine['id']}").status_code == 200
    guessed = ui.get(f"/ui/requests/{theirs['id']}")
    assert guessed.status_code == 404 and "bob" not in guessed.text
    assert ui.get("/ui/requests", id=theirs["id"]).status_code == 404
    assert ui.get("/ui/requests", team="team-b").text.count(theirs["id"]) == 0  # the team filter is forced
    assert "secret-label-b" not in ui.get("/ui/guardrails").text
    keys_page = ui.get("/ui/keys").text
    assert "a-key" in keys_page and "b-key" not in keys_page and "Create key" not in keys_page
    for path in ("/ui/evals", "/ui/experiments"):
        assert ui.get(path).status_code == 403
    assert 'href="/ui/evals"' not in ui.get("/ui/").text
    assert ui.post("/ui/keys", {"team": "team-a"}).status_code == 403


def test_revoking_a_key_ends_the_sessions_made_with_it(gw, open_ui) -> None:
    key = gw.create_key("team-a")
    member = open_ui(gw, key)
    admin = open_ui(gw, ADMIN_KEY)
    key_id = key.split("-")[2]
    assert admin.post(f"/ui/keys/{key_id}/revoke").status_code == 303
    assert member.get("/ui/").status_code == 303
    assert admin.post(f"/ui/keys/{key_id}/revoke").status_code == 404


def test_request_log_pages_by_keyset_without_gaps_or_repeats(gw, open_ui) -> None:
    now = time.time()
    rows = [request_row(ts=now - i, id=f"r{i:04d}") for i in range(110)]
    rows += [request_row(ts=now - 50, id=f"tie{i}") for i in range(5)]  # same instant: the id breaks the tie
    seed(gw, rows)
    ui = open_ui(gw, ADMIN_KEY)
    seen: list[str] = []
    path = "/ui/requests"
    for _ in range(5):
        page = ui.http.get(path).text
        seen += re.findall(r'href="/ui/requests/([^"]+)"', page)
        older = re.search(r'href="(/ui/requests\?before=[^"]+)">Older', page)
        if older is None:
            break
        path = older.group(1).replace("&amp;", "&")
    assert len(seen) == len(set(seen)) == 115
    by_id = {r["id"]: r["ts"] for r in rows}
    assert [by_id[i] for i in seen] == sorted(by_id.values(), reverse=True)


def test_request_log_filters_narrow_the_search(gw, open_ui) -> None:
    blocked = request_row(status=403, error_code="guard_blocked", subject="mallory")
    seed(gw, [blocked, request_row(subject="mallory"), request_row(subject="zed", model="gpt-test")])
    ui = open_ui(gw, ADMIN_KEY)
    found = re.findall(r'href="/ui/requests/([^"]+)"', ui.get("/ui/requests", status="blocked").text)
    assert found == [blocked["id"]]
    assert len(re.findall(r'href="/ui/requests/', ui.get("/ui/requests", subject="mallory").text)) == 2
    assert len(re.findall(r'href="/ui/requests/', ui.get("/ui/requests", model="gpt-test").text)) == 1


def test_trace_shows_principal_routing_findings_by_stage_and_the_app_response(gw, open_ui) -> None:
    row = request_row(status=403, error_code="guard_blocked", attempts=2, fallbacks=1, deployment="fake/fake-model")
    findings = [finding_row(row["id"]), finding_row(row["id"], stage="output", detector="pii", label="EMAIL",
                                                     action="redact")]  # fmt: skip
    answer = {
        "request_id": row["id"],
        "ts": row["ts"],
        "app": "helpdesk",
        "team": "team-a",
        "outcome": "blocked",
        "payload": "none",
        "sources": json.dumps([{"kb": "handbook", "doc_id": "leave.md", "version": 1}]),
    }
    seed(gw, [row], findings, [answer])
    page = open_ui(gw, ADMIN_KEY).get(f"/ui/requests/{row['id']}").text
    for text in ("Stage: input", "Stage: output", "injection", "EMAIL", "helpdesk", "blocked", "leave.md",
                 "fake/fake-model", "<dt>Fallbacks</dt><dd>1</dd>", "<dt>Attempts</dt><dd>2</dd>"):  # fmt: skip
        assert text in page, text
    # Two attempts but no steps: a record from before steps were kept, said so rather than "no upstream was tried".
    assert page.count("Not recorded: this request was logged before gengate kept its steps.") == 3
    assert "No upstream was tried." not in page
    # The cited document is not in the store (no such knowledge base here): said so, not shown as "nobody".
    assert cells(page, "Knowledge base") == [["handbook", "leave.md", "1", "—", "—", "", "no longer stored"]]


FALLBACK = {
    "providers": {"backup": {"type": "openai", "base_url": "", "api_key": "upstream-secret", "timeout": 5}},
    "models": {"gpt-test": {"deployments": [{"provider": "fake", "model": "fake-model"},
                                            {"provider": "backup", "model": "backup-model", "priority": 1}]}},
    "pricing": {"backup-model": {"input": 1.0, "output": 2.0}},
    "routing": {"max_retries": 1},
}  # fmt: skip


def test_trace_lists_each_routing_attempt_with_its_error(storage, make_gateway, upstream, sdk, open_ui) -> None:
    config = merge(FALLBACK, {"providers": {"backup": {"base_url": upstream.base_url}}})
    gw = make_gateway({**UI, **storage, **config})
    upstream.queue("fake-model", Step(status=503, error_message="upstream echo: my prompt was PROMPT-1234"),
                   Step(status=500, error_message="upstream echo: PROMPT-1234"))  # fmt: skip
    upstream.queue("backup-model", Step(content="from the backup"))
    raw = sdk(gw, gw.create_key("team-a")).chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().choices[0].message.content == "from the backup"
    request_id = raw.headers["x-request-id"]
    gw.run(gw.gateway.traces.flush())

    page = open_ui(gw, ADMIN_KEY).get(f"/ui/requests/{request_id}").text
    attempts = cells(page, "Attempt")
    # Two tries at the primary (one retry), then the fallback: each with its own outcome, in order.
    assert [row[:7] for row in attempts] == [
        ["1", "—", "fake/fake-model", "failed", "bad_gateway", "503", "upstream fake answered HTTP 503"],
        ["2", "—", "fake/fake-model", "failed", "bad_gateway", "500", "upstream fake answered HTTP 500"],
        ["3", "—", "backup/backup-model", "answered", "", "", ""],
    ]
    assert all(float(row[7].replace(",", "")) >= 0 for row in attempts)  # each try's latency
    assert "<dt>Attempts</dt><dd>3</dd>" in page and "<dt>Fallbacks</dt><dd>1</dd>" in page
    # What the upstream wrote (which may quote the request) is neither shown nor stored.
    assert "PROMPT-1234" not in page
    assert "PROMPT-1234" not in json.dumps(gw.run(gw.gateway.store.steps_for(request_id)))
    assert "keeps cited sources" not in page
    other_team = open_ui(gw, gw.create_key("team-b"))
    assert other_team.get(f"/ui/requests/{request_id}").status_code == 404


def test_recorded_values_are_escaped(gw, open_ui) -> None:
    row = request_row(subject="<script>alert(1)</script>", model='"><img src=x onerror=alert(1)>')
    seed(gw, [row])
    ui = open_ui(gw, ADMIN_KEY)
    for path in ("/ui/requests", f"/ui/requests/{row['id']}"):
        page = ui.get(path).text
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.parametrize(
    ("method", "path", "data", "status"),
    [
        ("GET", "/ui/requests?before=not-a-cursor", None, 400),
        ("GET", "/ui/requests?status=sideways", None, 400),
        ("GET", "/ui/requests?subject=" + "s" * 500, None, 400),
        ("GET", "/ui/requests?subject=%00", None, 400),
        ("GET", "/ui/?range=2y", None, 400),
        ("GET", "/ui/feedback?before=abc", None, 400),
        ("GET", "/ui/requests/no-such-request", None, 404),
        ("GET", "/ui/requests/" + "r" * 300, None, 404),
        ("GET", "/ui/requests/nul%00byte", None, 400),  # PostgreSQL refuses NUL in text: never sent to it
        ("GET", "/ui/knowledge/nul%00byte", None, 400),
        ("GET", "/ui/experiments/nul%00byte", None, 400),
        ("POST", "/ui/keys/nul%00byte/revoke", {}, 400),
        ("GET", "/ui/knowledge/no-such-kb", None, 404),
        ("GET", "/ui/knowledge/no-such-kb/document?id=x", None, 404),
        ("GET", "/ui/evals/no-such-run", None, 404),
        ("GET", "/ui/evals/report/..%2f..%2fetc%2fpasswd", None, 400),
        ("GET", "/ui/evals/report/.hidden", None, 404),
        ("GET", "/ui/experiments/nope", None, 404),
        ("POST", "/ui/experiments/nope/start", {}, 404),
        ("POST", "/ui/keys", {"team": "t", "rpm": "many"}, 400),
        ("POST", "/ui/keys", {"team": "t", "budget_usd": "-3"}, 400),
        ("POST", "/ui/keys", {"team": ""}, 400),
        ("POST", "/ui/keys/nope/revoke", {}, 404),
    ],
)
def test_bad_input_gets_a_4xx_page_not_a_500(
    gw, method: str, path: str, data: dict | None, status: int, open_ui
) -> None:
    ui = open_ui(gw, ADMIN_KEY)
    resp = ui.get(path) if method == "GET" else ui.post(path, data)
    assert resp.status_code == status, resp.text


def test_a_form_sent_as_json_is_refused(gw, open_ui) -> None:
    ui = open_ui(gw, ADMIN_KEY)
    resp = ui.http.post("/ui/keys", json={"team": "t", "csrf": ui.csrf()})
    assert resp.status_code == 400


def test_sign_in_never_redirects_off_the_dashboard(gw, open_ui) -> None:
    for target in ("//evil.example/", "https://evil.example/", "/admin/keys", "/ui/\\evil"):
        resp = open_ui(gw).sign_in(ADMIN_KEY, next_path=target)
        assert resp.headers["location"] == "/ui/"
    assert open_ui(gw).sign_in(ADMIN_KEY, next_path="/ui/keys").headers["location"] == "/ui/keys"


def test_with_an_admin_port_admins_sign_in_there_only(storage, make_gateway, open_ui) -> None:
    gw = make_gateway({**UI, **storage, "server": {"admin_port": free_port()}})
    public = open_ui(gw)
    resp = public.sign_in(ADMIN_KEY)
    assert resp.status_code == 403 and "admin port" in resp.text
    admin = open_ui(gw, ADMIN_KEY, admin_port=True)
    assert admin.get("/ui/evals").status_code == 200
    # Cookies do not isolate ports: the admin session's cookie has its own name, and the public plane ignores it.
    stolen = httpx.get(f"{gw.url}/ui/", cookies={"gengate_ui": admin.http.cookies["gengate_ui_admin"]})
    assert stolen.status_code == 303
    member = open_ui(gw, gw.create_key("team-a"))
    assert member.get("/ui/requests").status_code == 200


def test_jwt_sign_in_maps_team_and_admin_role(storage, make_gateway, open_ui) -> None:
    gw = make_gateway({**UI, **JWT, **storage})
    member = open_ui(gw, _token(team="research"))
    assert "carol (team research)" in member.get("/ui/").text
    assert member.get("/ui/evals").status_code == 403
    admin = open_ui(gw, _token(team="platform", roles=["admin"]))
    assert admin.get("/ui/evals").status_code == 200
    expired = open_ui(gw).sign_in(_token(team="x", exp=int(time.time()) - 600))
    assert expired.status_code == 401
    long = open_ui(gw).sign_in(_token(team="research", sub="s" * 255))  # OpenID Connect allows 255 characters
    assert long.status_code == 401 and "too long" in long.text  # refused, never cut to fit the session's column


def test_experiment_starts_and_stops_from_the_dashboard(storage, make_gateway, open_ui) -> None:
    apps = {"help": {"knowledge_bases": ["handbook"]}}
    gw = make_gateway({**UI, **storage, "rag": {"embeddings": "none"}, "apps": apps})
    spec = spec_from_data({"name": "tone", "app": "help", "variants": [{"name": "control"}, {"name": "terse"}]})
    gw.run(ExperimentStore(gw.gateway.store.engine).create(spec))
    ui = open_ui(gw, ADMIN_KEY)
    assert "Start" in ui.get("/ui/experiments").text
    started = ui.post("/ui/experiments/tone/start")
    assert started.status_code == 303 and started.headers["location"] == "/ui/experiments/tone?done=start"
    page = ui.get("/ui/experiments/tone").text
    assert "running" in page and "thumbs-up rate (primary)" in page
    assert ui.post("/ui/experiments/tone/start").status_code == 409
    assert ui.post("/ui/experiments/tone/stop").status_code == 303
    assert gw.run(ExperimentStore(gw.gateway.store.engine).get("tone")).status == "stopped"


def test_rolled_up_hours_and_the_live_log_add_up_to_the_raw_log(gw, open_ui) -> None:
    now = time.time()
    key = gw.create_key("team-a", budget_usd=100.0, budget_period="total").split("-")[2]
    rows = [request_row(ts=now - h * 3600 - 60, cost_usd=0.5, key_id=key, status=500 if h % 5 == 0 else 200)
            for h in range(0, 30)]  # fmt: skip
    rows += [request_row(ts=now - 2 * 86400, team="team-b", cost_usd=2.0)]
    seed(gw, rows)
    ui = open_ui(gw, ADMIN_KEY)
    for _ in range(2):  # the first load rolls the complete hours up, the second reads them back
        page = ui.get("/ui/", range="7d").text
        assert '<div class="k">Requests</div><div class="v">31</div>' in page
        assert '<div class="k">Cost</div><div class="v">$17.0000</div>' in page
        assert '<div class="k">Errors (4xx + 5xx)</div><div class="v">6 · 19.4%</div>' in page
        keys_page = ui.get("/ui/keys").text
        assert "$15.0000 of $100.00 (15%)" in keys_page, re.findall(r"<tr><td>[0-9a-f]{8}</td>.*?</tr>", keys_page)

    async def rolled() -> int:
        async with gw.gateway.store.engine.connect() as conn:
            return int((await conn.execute(sa.text("SELECT SUM(requests) FROM ui_rollup_requests"))).scalar() or 0)

    assert 28 <= gw.run(rolled()) <= 30  # every complete hour but the last (the roll-up waits for late rows)
