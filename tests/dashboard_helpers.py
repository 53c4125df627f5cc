"""Helpers for the dashboard tests: a signed-in HTTP client, rows to seed the request log with, and readers of the
pages' tables and figures."""

from __future__ import annotations

import html
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:  # conftest imports this module for its `open_ui` fixture
    from conftest import RunningGateway

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
TABLE = re.compile(r"<table>(.*?)</table>", re.S)
TAG = re.compile(r"<[^>]+>")
UI = {"ui": {"cookie_secure": False}}


class UiClient:
    """An httpx client that signs in to `/ui` and sends forms with the page's CSRF token."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30, follow_redirects=False)

    def sign_in(self, credential: str, next_path: str | None = None) -> httpx.Response:
        page = self.http.get("/ui/login", params={"next": next_path} if next_path else None)
        token = CSRF.search(page.text)
        assert token is not None, page.text
        data = {"csrf": token.group(1), "credential": credential}
        if next_path:
            data["next"] = next_path
        return self.http.post("/ui/login", data=data)

    def csrf(self, path: str = "/ui/") -> str:
        page = self.http.get(path)
        assert page.status_code == 200, page.text
        match = CSRF.search(page.text)
        assert match is not None
        return match.group(1)

    def post(self, path: str, data: dict[str, str] | None = None, *, token: str | None = None) -> httpx.Response:
        body = dict(data or {})
        body["csrf"] = token if token is not None else self.csrf()
        return self.http.post(path, data=body)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(path, params=params or None)

    def close(self) -> None:
        self.http.close()


def request_row(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": uuid.uuid4().hex, "ts": time.time(), "subject": "alice", "team": "team-a", "key_id": None,
        "endpoint": "chat", "model": "offline", "deployment": "offline/offline", "status": 200, "error_code": None,
        "stream": False, "prompt_tokens": 10, "completion_tokens": 5, "cached_tokens": 0, "cost_usd": 0.001,
        "latency_ms": 42.0, "ttft_ms": None, "attempts": 1, "fallbacks": 0, "client_disconnected": False,
    }  # fmt: skip
    row.update(over)
    return row


def finding_row(request_id: str, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "request_id": request_id, "ts": time.time(), "team": "team-a", "profile": "default", "stage": "input",
        "detector": "injection", "detector_version": "1", "label": "prompt_injection", "action": "block",
        "score": 0.97, "span_start": 0, "span_end": 12, "value_hash": None,
    }  # fmt: skip
    row.update(over)
    return row


def seed(gw: RunningGateway, rows: list[dict[str, Any]], findings: list[dict[str, Any]] | None = None,
         answers: list[dict[str, Any]] | None = None) -> None:  # fmt: skip
    gw.run(gw.gateway.store.write_requests(rows, findings or [], answers or []))


def cells(page: str, first_header: str) -> list[list[str]]:
    """The rows (cell text, tags stripped) of the page's first table whose first column is `first_header`."""
    for found in TABLE.findall(page):
        head, _, body = found.partition("</thead>")
        first = re.search(r"<th(?: [^>]*)?>(.*?)</th>", head)
        if first is not None and html.unescape(first.group(1)) == first_header:
            rows = re.findall(r"<tr>(.*?)</tr>", body)
            return [[html.unescape(TAG.sub("", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
                    for row in rows if "colspan" not in row]  # fmt: skip
    raise AssertionError(f"no table starting with {first_header!r}")


def card(page: str, label: str) -> str:
    """The value of one of the overview's headline figures."""
    found = re.search(r'<div class="k">' + re.escape(label) + r'</div><div class="v">([^<]*)</div>', page)
    assert found is not None, label
    return html.unescape(found.group(1))


def walk(ui: UiClient, path: str, pages: int = 10) -> list[str]:
    """The request ids of a request-log search, following its "Older requests" links."""
    seen: list[str] = []
    for _ in range(pages):
        page = ui.http.get(path)
        assert page.status_code == 200, page.text
        seen += re.findall(r'href="/ui/requests/([^"?]+)"', page.text)
        older = re.search(r'href="(/ui/requests\?before=[^"]+)">Older', page.text)
        if older is None:
            return seen
        path = html.unescape(older.group(1))
    raise AssertionError(f"more than {pages} pages")
