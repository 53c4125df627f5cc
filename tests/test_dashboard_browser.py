"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright): sign in, find a request the
guard blocked and open its trace, create and revoke a key, start and stop an experiment, and a team member who
guesses another team's trace URL gets "not found". In CI (GENGATE_REQUIRE_SERVICES) a missing browser fails."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import ADMIN_KEY, RunningGateway, require
from dashboard_helpers import UI
from gengate.outer.experiments import spec_from_data
from gengate.store.experiments import ExperimentStore

CHROMIUM = os.environ.get("GENGATE_CHROMIUM", "/usr/bin/chromium")
CONFIG = {
    **UI,
    "guard": {
        "default_profile": "strict",
        "profiles": {
            "strict": {"input": [{"detector": "competitors", "options": {"competitors": ["acme"]}, "action": "block"}]}
        },
    },
    "rag": {"embeddings": "none"},
    "apps": {"help": {"knowledge_bases": ["handbook"]}},
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        require("Chromium", f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require("Playwright", "pip install -e '.[dev]'")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def lab(make_gateway) -> RunningGateway:
    gw = make_gateway(CONFIG)
    spec = spec_from_data({"name": "tone", "app": "help", "variants": [{"name": "control"}, {"name": "terse"}]})
    gw.run(ExperimentStore(gw.gateway.store.engine).create(spec))
    return gw


def _chat(gw: RunningGateway, key: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{gw.base_url}/chat/completions", headers={"authorization": f"Bearer {key}"},
        json={"model": "offline", "messages": [{"role": "user", "content": text}]}, timeout=30,
    )  # fmt: skip


def _blocked_request(gw: RunningGateway, key: str) -> str:
    assert _chat(gw, key, "hello there").status_code == 200
    request_id = _chat(gw, key, "Is Acme cheaper than you?").headers["x-request-id"]
    deadline = time.monotonic() + 10
    while (row := gw.run(gw.gateway.store.get_request(request_id))) is None:  # the log is written in batches
        assert time.monotonic() < deadline, "the blocked request never reached the log"
        time.sleep(0.05)
    assert row["error_code"] == "guard_blocked"
    return request_id


def _sign_in(context: Any, gw: RunningGateway, credential: str) -> Any:
    page = context.new_page()
    page.goto(f"{gw.url}/ui/")
    assert "/ui/login" in page.url
    page.get_by_label("API key or token").fill(credential)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{gw.url}/ui/")
    return page


def test_admin_finds_a_blocked_request_and_opens_its_trace(browser, lab) -> None:
    key = lab.create_key("team-a")
    request_id = _blocked_request(lab, key)
    context = browser.new_context()
    page = _sign_in(context, lab, ADMIN_KEY)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    assert page.locator("#chart-requests svg").count() == 1
    page.get_by_role("link", name="Requests").click()
    page.get_by_label("Status").select_option("blocked")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=request_id).click()
    page.wait_for_url(f"{lab.url}/ui/requests/{request_id}")
    content = page.content()
    assert "Stage: input" in content and "competitors" in content and "blocked" in content
    assert page.get_by_role("heading", name=f"Trace {request_id}").is_visible()
    context.close()


def test_admin_creates_and_revokes_a_key(browser, lab) -> None:
    context = browser.new_context()
    page = _sign_in(context, lab, ADMIN_KEY)
    page.get_by_role("link", name="Keys & budgets").click()
    page.get_by_label("Team (required)").fill("team-new")
    page.get_by_label("Name", exact=True).fill("from-the-browser")
    page.get_by_label("Budget (USD)").fill("12.5")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("New key secret").input_value()
    assert secret.startswith("sk-gg-")
    assert _chat(lab, secret, "hello").status_code == 200  # the key works
    key_id = secret.split("-")[2]
    page.get_by_role("button", name=f"Revoke key {key_id}").click()
    page.wait_for_url(f"{lab.url}/ui/keys?revoked=1")
    row = page.locator("tr", has_text="from-the-browser")
    assert "revoked" in row.inner_text()
    assert _chat(lab, secret, "hello").status_code == 401
    context.close()


def test_admin_starts_and_stops_an_experiment(browser, lab) -> None:
    context = browser.new_context()
    page = _sign_in(context, lab, ADMIN_KEY)
    page.get_by_role("link", name="Experiments").click()
    page.get_by_role("button", name="Start experiment tone").click()
    page.wait_for_url(f"{lab.url}/ui/experiments/tone?done=start")
    assert page.get_by_role("status").inner_text() == "Experiment tone: start done."
    assert lab.run(ExperimentStore(lab.gateway.store.engine).get("tone")).status == "running"
    page.get_by_role("button", name="Stop experiment tone").click()
    page.wait_for_url(f"{lab.url}/ui/experiments/tone?done=stop")
    assert lab.run(ExperimentStore(lab.gateway.store.engine).get("tone")).status == "stopped"
    context.close()


def test_team_member_cannot_open_another_teams_trace_by_its_url(browser, lab) -> None:
    theirs = _blocked_request(lab, lab.create_key("team-a"))
    context = browser.new_context()
    page = _sign_in(context, lab, lab.create_key("team-b"))
    response = page.goto(f"{lab.url}/ui/requests/{theirs}")
    assert response is not None and response.status == 404
    assert page.get_by_role("heading", name="Not found").is_visible()
    assert theirs not in page.get_by_role("main").inner_text()
    page.goto(f"{lab.url}/ui/requests")
    assert theirs not in page.content()
    assert page.get_by_role("link", name="Experiments").count() == 0
    context.close()
