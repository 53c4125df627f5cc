"""Identity and the admin plane: key lifecycle, admin-only access, a separate admin port, JWT callers."""

from __future__ import annotations

import time

import httpx
import jwt
import openai
import pytest

from conftest import ADMIN_KEY, free_port

SECRET = "jwt-test-secret-that-is-long-enough-0123456789"
MSG = [{"role": "user", "content": "hi"}]


def _token(claims: dict[str, object], secret: str = SECRET, alg: str = "HS256") -> str:
    base = {"iss": "https://idp.test", "aud": "gengate", "exp": int(time.time()) + 300, "sub": "alice"}
    return jwt.encode({**base, **claims}, secret, algorithm=alg)


JWT_CONFIG = {
    "auth": {
        "jwt_issuers": [
            {
                "issuer": "https://idp.test",
                "audience": "gengate",
                "algorithm": "HS256",
                "secret": SECRET,
                "claims": {"team": "org.team", "roles": "roles"},
            }
        ]
    }
}


def test_key_is_shown_once_and_stored_only_as_hash(gateway) -> None:
    with gateway.admin() as admin:
        created = admin.post("/admin/keys", json={"team": "team-a", "name": "ci", "rpm": 10}).json()
        listed = admin.get("/admin/keys", params={"team": "team-a"}).json()["data"]
    secret = created["key"]
    assert secret.startswith(f"sk-gg-{created['id']}-")
    assert [k["id"] for k in listed] == [created["id"]]
    assert all("key" not in k and "hash" not in k for k in listed)
    record = gateway.run(gateway.gateway.store.get_key(created["id"]))
    assert secret not in record.hash and len(record.hash) == 64


def test_admin_api_refuses_non_admin_callers(gateway) -> None:
    key = gateway.create_key("team-a")
    for headers in ({}, {"authorization": f"Bearer {key}"}):
        resp = httpx.get(f"{gateway.url}/admin/keys", headers=headers)
        assert resp.status_code in (401, 403)
        assert "error" in resp.json()
    assert httpx.get(f"{gateway.url}/metrics", headers={"authorization": f"Bearer {key}"}).status_code == 403


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "team is required"),
        ({"team": "a", "rpm": "many"}, "rpm"),
        ({"team": "a", "budget_period": "fortnight"}, "budget_period"),
        ({"team": "a", "colour": "blue"}, "unknown fields"),
        ({"team": "a", "expires_in_seconds": -5}, "expires_in_seconds"),
        ({"team": "t" * 201}, "team must be at most 200 characters"),
        ({"team": "a", "name": "bad\u0000name"}, "name must be at most 200 characters, without NUL"),
        ({"team": "a", "models": ["m" * 201]}, "model pattern"),
    ],
)
def test_admin_key_creation_validates_fields(gateway, body: dict[str, object], fragment: str) -> None:
    with gateway.admin() as admin:
        resp = admin.post("/admin/keys", json=body)
    assert resp.status_code == 400 and fragment in resp.json()["error"]["message"]


def test_admin_plane_on_separate_port_is_absent_from_public_port(make_gateway, sdk) -> None:
    gw = make_gateway({"server": {"admin_port": free_port()}})
    assert gw.admin_port != gw.port
    key = gw.create_key("team-a")  # through the admin port
    assert (
        httpx.post(
            f"{gw.url}/admin/keys", json={"team": "x"}, headers={"authorization": f"Bearer {ADMIN_KEY}"}
        ).status_code
        == 404
    )
    sdk(gw, key).chat.completions.create(model="offline", messages=MSG)
    assert httpx.get(f"{gw.admin_url}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200


def test_jwt_caller_gets_team_from_claims_and_is_limited_by_team_policy(make_gateway, sdk) -> None:
    gw = make_gateway({**JWT_CONFIG, "policy": {"teams": {"research": {"models": ["offline"]}}}})
    token = _token({"org": {"team": "research"}})
    client = sdk(gw, token)
    assert [m.id for m in client.models.list()] == ["offline"]
    client.chat.completions.create(model="offline", messages=MSG)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-test", messages=MSG)
    time.sleep(0.3)
    with gw.admin() as admin:
        rows = admin.get("/admin/requests", params={"team": "research"}).json()["data"]
    assert rows and rows[0]["subject"] == "alice"


@pytest.mark.parametrize(
    "token_factory",
    [
        lambda: _token({"org": {"team": "t"}, "exp": int(time.time()) - 600}),
        lambda: _token({"org": {"team": "t"}}, secret="another-secret-that-is-long-enough-0123456789"),
        lambda: _token({"org": {"team": "t"}, "aud": "someone-else"}),
        lambda: jwt.encode({"iss": "https://idp.test", "sub": "x", "org": {"team": "t"}}, None, algorithm="none"),
    ],
    ids=["expired", "wrong-secret", "wrong-audience", "alg-none"],
)
def test_bad_jwts_are_rejected_with_401(make_gateway, token_factory) -> None:
    gw = make_gateway(JWT_CONFIG)
    resp = httpx.post(
        f"{gw.base_url}/chat/completions", json={"model": "offline", "messages": MSG},
        headers={"authorization": f"Bearer {token_factory()}"},
    )  # fmt: skip
    assert resp.status_code == 401 and resp.json()["error"]["type"] == "authentication_error"


def test_jwt_with_admin_role_can_use_admin_api(make_gateway) -> None:
    gw = make_gateway(JWT_CONFIG)
    admin_token = _token({"org": {"team": "platform"}, "roles": ["admin"]})
    user_token = _token({"org": {"team": "platform"}, "roles": ["user"]})
    assert httpx.get(f"{gw.url}/admin/keys", headers={"authorization": f"Bearer {admin_token}"}).status_code == 200
    assert httpx.get(f"{gw.url}/admin/keys", headers={"authorization": f"Bearer {user_token}"}).status_code == 403


def test_a_role_named_admin_is_not_gengates_admin_unless_configured(make_gateway) -> None:
    config = {"auth": {**JWT_CONFIG["auth"], "admin_roles": ["gengate-admin"]}}
    gw = make_gateway(config)
    someone_elses_admin = _token({"org": {"team": "platform"}, "roles": ["admin"]})
    ours = _token({"org": {"team": "platform"}, "roles": ["gengate-admin"]})
    assert (
        httpx.get(f"{gw.url}/admin/keys", headers={"authorization": f"Bearer {someone_elses_admin}"}).status_code == 403
    )
    assert httpx.get(f"{gw.url}/admin/keys", headers={"authorization": f"Bearer {ours}"}).status_code == 200
