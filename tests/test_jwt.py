"""JwtVerifier: issuers, pinned algorithms, key sources (secret, JWKS file, JWKS URL), time claims, mapping.

Keys are generated per test run with `cryptography`; the JWKS URL is a real aiohttp server on loopback whose
key set, status and hit count the test controls. Time is an injected fake clock.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gengate.auth.jwt import JwtVerifier
from gengate.errors import AuthenticationError, ConfigError
from gengate.settings import ClaimMapping, JwtIssuer

ISSUER = "https://idp.example.test/realms/acme"
SECRET = "an-hs256-test-secret-of-at-least-32-bytes"
NOW = 1_700_000_000.0

MakeVerifier = Callable[..., JwtVerifier]


# ---------------------------------------------------------------- fixtures and helpers


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class JwksServer:
    """A JWKS endpoint on loopback: the test sets `document` and `status`, and reads `hits`."""

    url: str = ""
    document: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    status: int = 200
    hits: int = 0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_verifier(clock: FakeClock) -> AsyncIterator[MakeVerifier]:
    """Build verifiers on the fake clock; every one is closed at teardown."""
    made: list[JwtVerifier] = []

    def make(*issuers: JwtIssuer) -> JwtVerifier:
        verifier = JwtVerifier(issuers, clock=clock)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.aclose()


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()

    async def jwks(request: web.Request) -> web.Response:
        server.hits += 1
        return web.json_response(server.document, status=server.status)

    app = web.Application()
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}/jwks"
    yield server
    await runner.cleanup()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def rotated_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def claims(*, drop: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """A valid payload at the fake clock's starting time, with overrides and omissions."""
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "team": "search",
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        **extra,
    }
    for name in drop:
        payload.pop(name)
    return payload


def public_jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str | None) -> dict[str, Any]:
    """The public half of a key as a JWK, with `kid` and `use` as an identity provider publishes it."""
    if isinstance(key, rsa.RSAPrivateKey):
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk["use"] = "sig"
    if kid is not None:
        jwk["kid"] = kid
    return jwk


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made_token(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A token built without PyJWT, for the ones PyJWT refuses to make."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def hs_issuer(**overrides: Any) -> JwtIssuer:
    return JwtIssuer.model_validate({"issuer": ISSUER, "algorithm": "HS256", "secret": SECRET, **overrides})


def hs_token(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


async def verify_fails(verifier: JwtVerifier, token: str) -> str:
    """The AuthenticationError message for a token that must be refused."""
    with pytest.raises(AuthenticationError) as caught:
        await verifier.verify(token)
    message = caught.value.message
    assert SECRET not in message
    assert not token or token not in message
    return message


# ---------------------------------------------------------------- HS256 and claim mapping


async def test_accepts_hs256_token_and_maps_claims_to_principal(make_verifier: MakeVerifier) -> None:
    issuer = hs_issuer(
        audience="gengate",
        claims=ClaimMapping(team="org.team", roles="realm_access.roles", groups="groups"),
    )
    payload = claims(
        drop=("team",),
        aud="gengate",
        org={"team": "search"},
        realm_access={"roles": "reader, admin writer"},
        groups=["eng", "ml"],
    )
    token = hs_token(payload)

    principal = await make_verifier(issuer).verify(token)

    assert principal.subject == "alice"
    assert principal.team == "search"
    assert principal.roles == ("reader", "admin", "writer")
    assert principal.groups == ("eng", "ml")
    assert principal.auth == "jwt"
    assert "admin" in principal.roles and not principal.is_admin  # admin is granted by config, not role names
    assert principal.claims == payload
    assert principal.token == token


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (["admin", "reader"], ("admin", "reader")),
        ("admin reader", ("admin", "reader")),
        ("admin,reader", ("admin", "reader")),
        (" admin ,  reader ", ("admin", "reader")),
        ("", ()),
        ([], ()),
    ],
)
async def test_accepts_roles_as_list_or_separated_string(
    make_verifier: MakeVerifier, roles: Any, expected: tuple[str, ...]
) -> None:
    principal = await make_verifier(hs_issuer()).verify(hs_token(claims(roles=roles)))
    assert principal.roles == expected


async def test_absent_groups_and_roles_map_to_empty(make_verifier: MakeVerifier) -> None:
    principal = await make_verifier(hs_issuer()).verify(hs_token(claims()))
    assert (principal.groups, principal.roles) == ((), ())


async def test_rejects_roles_claim_of_wrong_type(make_verifier: MakeVerifier) -> None:
    message = await verify_fails(make_verifier(hs_issuer()), hs_token(claims(roles={"admin": True})))
    assert "roles claim" in message


async def test_reads_namespaced_claim_whose_name_contains_dots(make_verifier: MakeVerifier) -> None:
    issuer = hs_issuer(claims=ClaimMapping(team="https://acme.example/team"))
    token = hs_token(claims(drop=("team",), **{"https://acme.example/team": "search"}))
    assert (await make_verifier(issuer).verify(token)).team == "search"


async def test_rejects_token_signed_with_another_secret(make_verifier: MakeVerifier) -> None:
    token = hs_token(claims(), secret="another-secret-that-is-also-long-enough")
    assert await verify_fails(make_verifier(hs_issuer()), token) == "token signature invalid"


async def test_rejects_tampered_payload(make_verifier: MakeVerifier) -> None:
    header, _, signature = hs_token(claims()).split(".")
    forged = b64url(json.dumps(claims(team="finance")).encode())
    message = await verify_fails(make_verifier(hs_issuer()), f"{header}.{forged}.{signature}")
    assert message == "token signature invalid"


def test_refuses_hs256_secret_shorter_than_32_bytes() -> None:
    with pytest.raises(ConfigError, match=r"auth\.jwt_issuers\.0\.secret: HS256 needs at least 32 bytes"):
        JwtVerifier([hs_issuer(secret="short")])


def test_refuses_the_same_issuer_twice() -> None:
    with pytest.raises(ConfigError, match="configured twice"):
        JwtVerifier([hs_issuer(), hs_issuer()])


# ---------------------------------------------------------------- RS256 via a JWKS file


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "jwks.json"
    keys = [public_jwk(other_rsa_key, "old"), public_jwk(rsa_key, "current")]
    path.write_text(json.dumps({"keys": keys}), encoding="utf-8")
    return path


def rs_issuer(jwks_file: Path, **overrides: Any) -> JwtIssuer:
    return JwtIssuer.model_validate({"issuer": ISSUER, "algorithm": "RS256", "jwks_file": str(jwks_file), **overrides})


async def test_accepts_rs256_token_with_key_from_jwks_file(
    make_verifier: MakeVerifier, jwks_file: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "current"})
    principal = await make_verifier(rs_issuer(jwks_file)).verify(token)
    assert (principal.subject, principal.team) == ("alice", "search")


async def test_rejects_rs256_token_whose_kid_names_another_key(
    make_verifier: MakeVerifier, jwks_file: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "old"})
    assert await verify_fails(make_verifier(rs_issuer(jwks_file)), token) == "token signature invalid"


async def test_rejects_kid_missing_from_jwks_file(
    make_verifier: MakeVerifier, jwks_file: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "nope"})
    message = await verify_fails(make_verifier(rs_issuer(jwks_file)), token)
    assert message == f"token kid 'nope' is not in the JWKS of issuer {ISSUER!r}"


async def test_uses_the_only_key_when_token_has_no_kid(
    make_verifier: MakeVerifier, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"keys": [public_jwk(rsa_key, kid=None)]}), encoding="utf-8")
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert (await make_verifier(rs_issuer(path)).verify(token)).subject == "alice"


async def test_rejects_token_without_kid_when_jwks_has_several_keys(
    make_verifier: MakeVerifier, jwks_file: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    message = await verify_fails(make_verifier(rs_issuer(jwks_file)), token)
    assert message.startswith("token has no kid")


async def test_skips_jwks_keys_unusable_with_the_pinned_algorithm(
    make_verifier: MakeVerifier,
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    encryption_key = {**public_jwk(rsa_key, "enc"), "use": "enc"}
    path = tmp_path / "mixed.json"
    path.write_text(
        json.dumps({"keys": [public_jwk(ec_key, "ec"), encryption_key, public_jwk(rsa_key, None)]}),
        encoding="utf-8",
    )
    # Only the last key is an RSA signing key, so a token without kid may use it.
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert (await make_verifier(rs_issuer(path)).verify(token)).subject == "alice"


async def test_unreadable_jwks_file_is_an_authentication_error_without_the_path(
    make_verifier: MakeVerifier, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "missing.json"
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    message = await verify_fails(make_verifier(rs_issuer(path)), token)
    assert message == f"cannot load JWKS for issuer {ISSUER!r}"
    assert str(tmp_path) not in message


# ---------------------------------------------------------------- ES256 via a JWKS URL


def es_issuer(url: str, **overrides: Any) -> JwtIssuer:
    return JwtIssuer.model_validate({"issuer": ISSUER, "algorithm": "ES256", "jwks_url": url, **overrides})


def es_token(key: ec.EllipticCurvePrivateKey, kid: str, payload: dict[str, Any] | None = None) -> str:
    return jwt.encode(payload or claims(), key, algorithm="ES256", headers={"kid": kid})


async def test_accepts_es256_token_with_key_from_jwks_url_and_caches_it(
    make_verifier: MakeVerifier, jwks_server: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks_server.document = {"keys": [public_jwk(ec_key, "k1")]}
    verifier = make_verifier(es_issuer(jwks_server.url))

    for _ in range(3):
        assert (await verifier.verify(es_token(ec_key, "k1"))).subject == "alice"

    assert jwks_server.hits == 1


async def test_concurrent_first_requests_share_one_jwks_fetch(
    make_verifier: MakeVerifier, jwks_server: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks_server.document = {"keys": [public_jwk(ec_key, "k1")]}
    verifier = make_verifier(es_issuer(jwks_server.url))

    principals = await asyncio.gather(*(verifier.verify(es_token(ec_key, "k1")) for _ in range(5)))

    assert {p.subject for p in principals} == {"alice"}
    assert jwks_server.hits == 1


async def test_refetches_jwks_after_cache_expires(
    make_verifier: MakeVerifier,
    jwks_server: JwksServer,
    ec_key: ec.EllipticCurvePrivateKey,
    clock: FakeClock,
) -> None:
    jwks_server.document = {"keys": [public_jwk(ec_key, "k1")]}
    verifier = make_verifier(es_issuer(jwks_server.url, jwks_cache_seconds=60))
    token = es_token(ec_key, "k1", claims(exp=int(NOW) + 3600))

    await verifier.verify(token)
    clock.advance(59)
    await verifier.verify(token)
    assert jwks_server.hits == 1
    clock.advance(1)
    await verifier.verify(token)
    assert jwks_server.hits == 2


async def test_unknown_kid_after_key_rotation_triggers_refetch(
    make_verifier: MakeVerifier,
    jwks_server: JwksServer,
    ec_key: ec.EllipticCurvePrivateKey,
    rotated_ec_key: ec.EllipticCurvePrivateKey,
    clock: FakeClock,
) -> None:
    jwks_server.document = {"keys": [public_jwk(ec_key, "k1")]}
    verifier = make_verifier(es_issuer(jwks_server.url))
    await verifier.verify(es_token(ec_key, "k1"))

    jwks_server.document = {"keys": [public_jwk(ec_key, "k1"), public_jwk(rotated_ec_key, "k2")]}
    clock.advance(11)
    principal = await verifier.verify(es_token(rotated_ec_key, "k2"))

    assert principal.subject == "alice"
    assert jwks_server.hits == 2


async def test_unknown_kid_refetches_at_most_once_per_ten_seconds(
    make_verifier: MakeVerifier,
    jwks_server: JwksServer,
    ec_key: ec.EllipticCurvePrivateKey,
    clock: FakeClock,
) -> None:
    jwks_server.document = {"keys": [public_jwk(ec_key, "k1")]}
    verifier = make_verifier(es_issuer(jwks_server.url))
    await verifier.verify(es_token(ec_key, "k1"))

    for _ in range(3):
        message = await verify_fails(verifier, es_token(ec_key, "unknown"))
        assert message == f"token kid 'unknown' is not in the JWKS of issuer {ISSUER!r}"
        clock.advance(3)
    assert jwks_server.hits == 1

    clock.advance(1)  # 10 s after the last fetch
    await verify_fails(verifier, es_token(ec_key, "unknown"))
    assert jwks_server.hits == 2


async def test_rejects_es256_token_signed_by_key_not_in_jwks(
    make_verifier: MakeVerifier,
    jwks_server: JwksServer,
    ec_key: ec.EllipticCurvePrivateKey,
    rotated_ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    jwks_server.document = {"keys": [public_jwk(ec_key, "k1")]}
    token = es_token(rotated_ec_key, "k1")
    assert await verify_fails(make_verifier(es_issuer(jwks_server.url)), token) == "token signature invalid"


async def test_jwks_url_that_is_down_fails_fast_with_authentication_error(
    make_verifier: MakeVerifier, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    verifier = make_verifier(es_issuer(f"http://127.0.0.1:{port}/jwks"))

    started = time.monotonic()
    message = await verify_fails(verifier, es_token(ec_key, "k1"))

    assert message == f"cannot fetch JWKS for issuer {ISSUER!r}"
    assert time.monotonic() - started < 4


async def test_jwks_url_error_status_is_not_retried_for_ten_seconds(
    make_verifier: MakeVerifier,
    jwks_server: JwksServer,
    ec_key: ec.EllipticCurvePrivateKey,
    clock: FakeClock,
) -> None:
    jwks_server.status = 503
    verifier = make_verifier(es_issuer(jwks_server.url))
    token = es_token(ec_key, "k1")

    assert await verify_fails(verifier, token) == f"cannot fetch JWKS for issuer {ISSUER!r}"
    assert (await verify_fails(verifier, token)).endswith("(recent attempt failed)")
    assert jwks_server.hits == 1

    jwks_server.status = 200
    jwks_server.document = {"keys": [public_jwk(ec_key, "k1")]}
    clock.advance(10)
    assert (await verifier.verify(token)).subject == "alice"
    assert jwks_server.hits == 2


async def test_jwks_url_answering_non_jwks_json_is_an_authentication_error(
    make_verifier: MakeVerifier, jwks_server: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks_server.document = {"hello": "world"}
    message = await verify_fails(make_verifier(es_issuer(jwks_server.url)), es_token(ec_key, "k1"))
    assert message == f"cannot fetch JWKS for issuer {ISSUER!r}"


async def test_uses_injected_http_session_and_leaves_it_open(
    jwks_server: JwksServer, ec_key: ec.EllipticCurvePrivateKey, clock: FakeClock
) -> None:
    jwks_server.document = {"keys": [public_jwk(ec_key, "k1")]}
    async with aiohttp.ClientSession() as session:
        verifier = JwtVerifier([es_issuer(jwks_server.url)], http=session, clock=clock)
        await verifier.verify(es_token(ec_key, "k1"))
        await verifier.aclose()
        assert not session.closed


# ---------------------------------------------------------------- algorithm attacks


async def test_rejects_alg_none_token(make_verifier: MakeVerifier) -> None:
    token = hand_made_token({"alg": "none", "typ": "JWT"}, claims(), lambda _: b"")
    message = await verify_fails(make_verifier(hs_issuer()), token)
    assert message == f"token algorithm 'none' is not allowed for issuer {ISSUER!r}"


async def test_rejects_hs256_token_signed_with_the_issuers_rsa_public_key(
    make_verifier: MakeVerifier, jwks_file: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = hand_made_token(
        {"alg": "HS256", "typ": "JWT", "kid": "current"},
        claims(),
        lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
    )
    message = await verify_fails(make_verifier(rs_issuer(jwks_file)), token)
    assert message == f"token algorithm 'HS256' is not allowed for issuer {ISSUER!r}"


async def test_rejects_rs256_token_for_es256_issuer(
    make_verifier: MakeVerifier, jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    message = await verify_fails(make_verifier(es_issuer(jwks_server.url)), token)
    assert message == f"token algorithm 'RS256' is not allowed for issuer {ISSUER!r}"
    assert jwks_server.hits == 0


# ---------------------------------------------------------------- issuer, audience, time


async def test_rejects_token_from_unknown_issuer(make_verifier: MakeVerifier) -> None:
    token = hs_token(claims(iss="https://evil.example.test"))
    message = await verify_fails(make_verifier(hs_issuer()), token)
    assert message == "token issuer 'https://evil.example.test' is not trusted"


async def test_rejects_token_without_issuer(make_verifier: MakeVerifier) -> None:
    message = await verify_fails(make_verifier(hs_issuer()), hs_token(claims(drop=("iss",))))
    assert message == "token has no iss claim"


async def test_rejects_token_with_wrong_audience(make_verifier: MakeVerifier) -> None:
    token = hs_token(claims(aud="someone-else"))
    message = await verify_fails(make_verifier(hs_issuer(audience="gengate")), token)
    assert message == "token audience not accepted"


async def test_rejects_token_without_audience_when_one_is_configured(
    make_verifier: MakeVerifier,
) -> None:
    message = await verify_fails(make_verifier(hs_issuer(audience="gengate")), hs_token(claims()))
    assert message == "token has no aud claim"


async def test_accepts_token_for_any_configured_audience(make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(hs_issuer(audience=["gengate", "other"]))
    assert (await verifier.verify(hs_token(claims(aud=["x", "other"])))).subject == "alice"


async def test_ignores_audience_when_none_is_configured(make_verifier: MakeVerifier) -> None:
    assert (await make_verifier(hs_issuer()).verify(hs_token(claims(aud="anything")))).subject == "alice"


@pytest.mark.parametrize(
    ("seconds_after_exp", "accepted"),
    [(-1, True), (29, True), (30, False), (3600, False)],
)
async def test_expiry_honours_clock_and_leeway(
    make_verifier: MakeVerifier, clock: FakeClock, seconds_after_exp: float, accepted: bool
) -> None:
    verifier = make_verifier(hs_issuer(leeway_seconds=30))
    token = hs_token(claims(exp=int(NOW) + 300))
    clock.advance(300 + seconds_after_exp)
    if accepted:
        assert (await verifier.verify(token)).subject == "alice"
    else:
        assert await verify_fails(verifier, token) == "token expired"


async def test_rejects_token_without_exp(make_verifier: MakeVerifier) -> None:
    message = await verify_fails(make_verifier(hs_issuer()), hs_token(claims(drop=("exp",))))
    assert message == "token has no exp claim"


@pytest.mark.parametrize("exp", ["tomorrow", True, 1e400])
async def test_rejects_exp_that_is_not_a_finite_number(make_verifier: MakeVerifier, exp: Any) -> None:
    message = await verify_fails(make_verifier(hs_issuer()), hs_token(claims(exp=exp)))
    assert message == "token exp claim is not a valid timestamp"


async def test_rejects_token_whose_nbf_is_in_the_future(make_verifier: MakeVerifier) -> None:
    token = hs_token(claims(nbf=int(NOW) + 120))
    assert await verify_fails(make_verifier(hs_issuer(leeway_seconds=30)), token) == "token not yet valid"


async def test_accepts_nbf_within_leeway(make_verifier: MakeVerifier) -> None:
    token = hs_token(claims(nbf=int(NOW) + 20))
    assert (await make_verifier(hs_issuer(leeway_seconds=30)).verify(token)).subject == "alice"


# ---------------------------------------------------------------- subject and team


async def test_rejects_token_without_team_when_issuer_has_no_default_team(
    make_verifier: MakeVerifier,
) -> None:
    message = await verify_fails(make_verifier(hs_issuer()), hs_token(claims(drop=("team",))))
    assert message.startswith("token has no team claim ('team')")


async def test_uses_default_team_when_token_has_no_team(make_verifier: MakeVerifier) -> None:
    issuer = hs_issuer(claims=ClaimMapping(default_team="everyone"))
    assert (await make_verifier(issuer).verify(hs_token(claims(drop=("team",))))).team == "everyone"


async def test_team_claim_wins_over_default_team(make_verifier: MakeVerifier) -> None:
    issuer = hs_issuer(claims=ClaimMapping(default_team="everyone"))
    assert (await make_verifier(issuer).verify(hs_token(claims()))).team == "search"


async def test_rejects_token_without_subject(make_verifier: MakeVerifier) -> None:
    message = await verify_fails(make_verifier(hs_issuer()), hs_token(claims(drop=("sub",))))
    assert message == "token has no subject claim ('sub')"


@pytest.mark.parametrize("field", ["sub", "team"])
async def test_rejects_an_identity_claim_too_long_to_log_as_it_is(make_verifier: MakeVerifier, field: str) -> None:
    verifier = make_verifier(hs_issuer())
    assert (await verifier.verify(hs_token(claims(**{field: "x" * 200})))).subject
    message = await verify_fails(verifier, hs_token(claims(**{field: "x" * 201})))
    name = "subject" if field == "sub" else "team"
    assert message == f"token {name} claim ('{field}') is too long (at most 200 characters) or holds NUL"


# ---------------------------------------------------------------- malformed input and shape


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("garbage", "malformed token"),
        ("", "malformed token"),
        ("a.b.c", "malformed token"),
        ("eyJhbGciOiJIUzI1NiJ9.!!!.c2ln", "malformed token"),
        ("eyJhbGciOiJIUzI1NiJ9.W10.c2ln", "malformed token"),  # payload is a JSON list
        ("e30.e30.e30", "token has no iss claim"),  # {} . {} . junk
    ],
)
async def test_rejects_garbage_token(make_verifier: MakeVerifier, token: str, expected: str) -> None:
    assert await verify_fails(make_verifier(hs_issuer()), token) == expected


async def test_refuses_every_token_when_no_issuer_is_configured(
    make_verifier: MakeVerifier,
) -> None:
    verifier = make_verifier()
    assert not verifier.enabled
    assert await verify_fails(verifier, hs_token(claims())) == "JWT authentication is not configured"


def test_enabled_when_an_issuer_is_configured() -> None:
    assert JwtVerifier([hs_issuer()]).enabled


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl", True),
        ("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.", True),
        ("sk-gg-0123abcd-" + "a" * 40, False),
        ("a.b", False),
        ("a.b.c.d", False),
        ("a+b.c.d", False),
        ("", False),
    ],
)
def test_looks_like_jwt_checks_only_the_shape(token: str, expected: bool) -> None:
    assert JwtVerifier([]).looks_like_jwt(token) is expected
