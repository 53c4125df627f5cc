"""Bad input gets a clear 4xx in OpenAI's error shape — never a 500 or a hang — and the gateway keeps serving."""

from __future__ import annotations

import socket

import httpx
import pytest

from fake_upstream import FakeUpstream, Step

MSG = [{"role": "user", "content": "hi"}]


def _error(resp: httpx.Response) -> dict[str, object]:
    body = resp.json()
    assert set(body) == {"error"}
    assert {"message", "type", "param", "code"} <= set(body["error"])
    assert body["error"]["message"]
    return dict(body["error"])


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model is required"),
        (b'{"model": 42, "messages": []}', 400, "model"),
        (b'{"model": "offline", "messages": "hello"}', 400, "messages must be"),
        (b'{"model": "offline", "messages": []}', 400, "messages must be"),
        (b'{"model": "offline", "messages": [{"role": "wizard", "content": "x"}]}', 400, "role"),
        (b'{"model": "offline", "messages": [{"role": "user", "content": 7}]}', 400, "content"),
        (b'{"model": "offline", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "stream"),
        (b'{"model": "offline", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', 400, "max_tokens"),
        (
            b'{"model": "offline", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
            400,
            "temperature",
        ),
        (b'{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}', 404, "does not exist"),
        (b'{"model": "offline-embed", "messages": [{"role": "user", "content": "x"}]}', 400, "embedding model"),
    ],
)
def test_malformed_chat_requests_get_clear_errors(gateway, body: bytes, status: int, fragment: str) -> None:
    key = gateway.create_key("team-a")
    resp = httpx.post(
        f"{gateway.base_url}/chat/completions", content=body,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )  # fmt: skip
    assert resp.status_code == status
    assert fragment in str(_error(resp)["message"])
    assert resp.headers["x-request-id"]


def test_oversize_body_is_refused_with_413(make_gateway) -> None:
    gw = make_gateway({"server": {"max_body_bytes": 2048}})
    key = gw.create_key("team-a")
    big = {"model": "offline", "messages": [{"role": "user", "content": "x" * 5000}]}
    resp = httpx.post(f"{gw.base_url}/chat/completions", json=big, headers={"authorization": f"Bearer {key}"})
    assert resp.status_code == 413 and _error(resp)["code"] == "payload_too_large"

    # chunked upload without content-length is cut off at the limit too
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"model": "offline", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    resp = httpx.post(f"{gw.base_url}/chat/completions", content=chunks(), headers={"authorization": f"Bearer {key}"})
    assert resp.status_code == 413


def test_too_many_messages(make_gateway) -> None:
    gw = make_gateway({"server": {"max_messages": 3}})
    key = gw.create_key("team-a")
    resp = httpx.post(
        f"{gw.base_url}/chat/completions", headers={"authorization": f"Bearer {key}"},
        json={"model": "offline", "messages": MSG * 4},
    )  # fmt: skip
    assert resp.status_code == 400 and "too many messages" in str(_error(resp)["message"])


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "missing credentials"),
        ({"authorization": "Basic abc"}, "Bearer"),
        ({"authorization": "Bearer"}, "Bearer"),
        ({"authorization": "Bearer nonsense"}, "invalid API key"),
        ({"authorization": "Bearer sk-gg-00000000-" + "a" * 40}, "invalid API key"),
    ],
)
def test_bad_credentials_get_401(gateway, headers: dict[str, str], fragment: str) -> None:
    resp = httpx.post(
        f"{gateway.base_url}/chat/completions", json={"model": "offline", "messages": MSG}, headers=headers
    )
    assert resp.status_code == 401
    error = _error(resp)
    assert fragment in str(error["message"]) and error["type"] == "authentication_error"


def test_revoked_and_expired_keys_are_refused(gateway) -> None:
    key = gateway.create_key("team-a")
    key_id = key.split("-")[2]
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "offline", "messages": MSG}
    assert httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=headers).status_code == 200
    with gateway.admin() as admin:
        assert admin.delete(f"/admin/keys/{key_id}").status_code == 200
    resp = httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=headers)
    assert resp.status_code == 401 and "revoked" in str(_error(resp)["message"])

    short = gateway.create_key("team-a", expires_in_seconds=0.2)
    import time

    time.sleep(0.4)
    resp = httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers={"authorization": f"Bearer {short}"})
    assert resp.status_code == 401 and "expired" in str(_error(resp)["message"])


def test_upstream_garbage_and_hang_give_502_504_and_gateway_keeps_serving(make_gateway, upstream: FakeUpstream) -> None:
    gw = make_gateway({"providers": {"fake": {"timeout": 0.5}}, "routing": {"max_retries": 0}})
    key = gw.create_key("team-a")
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "gpt-test", "messages": MSG}
    upstream.queue("fake-model", Step(garbage=True), Step(delay=3))
    resp = httpx.post(f"{gw.base_url}/chat/completions", json=body, headers=headers, timeout=10)
    assert resp.status_code == 502 and "not JSON" in str(_error(resp)["message"])
    resp = httpx.post(f"{gw.base_url}/chat/completions", json=body, headers=headers, timeout=10)
    assert resp.status_code == 504 and _error(resp)["code"] == "upstream_timeout"
    assert httpx.post(f"{gw.base_url}/chat/completions", json=body, headers=headers).status_code == 200


def test_unknown_routes_and_methods_use_openai_error_shape(gateway) -> None:
    assert httpx.get(f"{gateway.url}/v1/nothing-here").status_code == 404
    assert _error(httpx.get(f"{gateway.url}/v1/nothing-here"))["code"] == "not_found"
    resp = httpx.get(f"{gateway.base_url}/chat/completions")
    assert resp.status_code == 405 and _error(resp)["code"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/v1/../admin/keys", "/v1//models", "/admin%2fkeys", "/v1/%2e%2e/admin/keys"])
def test_path_tricks_are_refused_on_the_raw_path(gateway, path: str) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400"), reply[:80]


def test_embeddings_bad_input(gateway) -> None:
    key = gateway.create_key("team-a")
    headers = {"authorization": f"Bearer {key}"}
    for body in ({"model": "offline-embed"}, {"model": "offline-embed", "input": ""},
                 {"model": "offline-embed", "input": [1, "a"]}, {"model": "offline", "input": "x"}):  # fmt: skip
        resp = httpx.post(f"{gateway.base_url}/embeddings", json=body, headers=headers)
        assert resp.status_code == 400, body
        _error(resp)
