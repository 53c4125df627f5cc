"""Bearer JWTs: verify a token against the configured issuers and map its claims to a Principal.

Owns: choosing the issuer by the token's (unverified) `iss`, the pinned-algorithm check, finding the key
(shared secret, JWKS file loaded once, or JWKS URL cached for `jwks_cache_seconds` and refetched on an
unknown `kid` at most every 10 s), the time claims checked against an injected clock, and the mapping of
claims to a Principal.

Must not: accept any algorithm but the issuer's pinned one, block the event loop on network or disk, log or
echo tokens or secrets, or put JWKS paths or URLs in error messages (those reach the client; details go to
the log). Virtual keys live in `gengate.auth.keys`; HTTP concerns in `gengate.app`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from pydantic import SecretStr

from gengate.errors import AuthenticationError, ConfigError
from gengate.settings import JwtIssuer
from gengate.types import Principal

_log = logging.getLogger(__name__)

_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_NAME_SEPARATORS = re.compile(r"[\s,]+")
_FETCH_TIMEOUT_SECONDS = 5.0
_REFETCH_INTERVAL_SECONDS = 10.0
_MAX_JWKS_BYTES = 1 << 20
_SHOWN_CHARS = 64  # how much of an untrusted header or claim value a message may quote

# Most specific first: InvalidSignatureError is a DecodeError.
_PYJWT_MESSAGES: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "token audience not accepted"),
    (jwt.InvalidIssuerError, "token issuer not accepted"),
    (jwt.InvalidSignatureError, "token signature invalid"),
    (jwt.InvalidAlgorithmError, "token algorithm not allowed"),
    (jwt.DecodeError, "malformed token"),
)


class _JwksCache:
    """One issuer's parsed JWKS and when it was last loaded or tried (state of one verifier, never shared)."""

    def __init__(self) -> None:
        self.keys: tuple[jwt.PyJWK, ...] | None = None
        self.loaded_at = 0.0
        self.attempted_at = -math.inf
        self.failed = False
        self.lock = asyncio.Lock()


class JwtVerifier:
    """Verifies bearer JWTs against configured issuers and maps claims to a Principal."""

    def __init__(
        self,
        issuers: Sequence[JwtIssuer],
        *,
        http: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuers: dict[str, JwtIssuer] = {}
        self._secrets: dict[str, bytes] = {}
        for i, issuer in enumerate(issuers):
            where = f"auth.jwt_issuers.{i}"
            if issuer.issuer in self._issuers:
                raise ConfigError(f"{where}.issuer: {issuer.issuer!r} is configured twice")
            self._issuers[issuer.issuer] = issuer
            if issuer.secret is not None:
                self._secrets[issuer.issuer] = _prepare_secret(issuer.secret, issuer.algorithm, where)
        self._caches = {name: _JwksCache() for name in self._issuers}
        self._http = http
        self._owns_http = False
        self._clock = clock

    @property
    def enabled(self) -> bool:
        """True when at least one issuer is configured."""
        return bool(self._issuers)

    def looks_like_jwt(self, token: str) -> bool:
        """Cheap shape check (three base64url segments) to tell JWTs from virtual keys; verifies nothing."""
        return _JWT_SHAPE.fullmatch(token) is not None

    async def verify(self, token: str) -> Principal:
        """Check signature, issuer, audience and time claims; return the caller, else AuthenticationError."""
        if not self.enabled:
            raise AuthenticationError("JWT authentication is not configured")
        issuer, kid = self._select_issuer(token)
        key = await self._key(issuer, kid)
        claims = _decode(token, issuer, key)
        self._check_times(claims, issuer)
        return _principal(claims, issuer, token)

    async def aclose(self) -> None:
        """Close the HTTP session if this verifier created it (an injected one belongs to the caller)."""
        if self._owns_http and self._http is not None:
            session, self._http, self._owns_http = self._http, None, False
            await session.close()

    def _select_issuer(self, token: str) -> tuple[JwtIssuer, str | None]:
        """The issuer named by the unverified `iss`, after checking the header's `alg` is the pinned one."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError):
            raise AuthenticationError("malformed token") from None
        name = unverified.get("iss")
        if not isinstance(name, str):
            raise AuthenticationError("token has no iss claim")
        issuer = self._issuers.get(name)
        if issuer is None:
            raise AuthenticationError(f"token issuer {_shown(name)} is not trusted")
        alg = header.get("alg")
        if alg != issuer.algorithm:
            raise AuthenticationError(f"token algorithm {_shown(alg)} is not allowed for issuer {name!r}")
        kid = header.get("kid")  # PyJWT has already rejected a non-string kid
        return issuer, kid if isinstance(kid, str) else None

    async def _key(self, issuer: JwtIssuer, kid: str | None) -> bytes | jwt.PyJWK:
        """The key that must have signed the token: the secret, or the JWKS key chosen by `kid`."""
        if issuer.secret is not None:
            return self._secrets[issuer.issuer]
        keys = await self._jwks(issuer, refresh=False)
        key = _select_key(keys, kid)
        if key is None and kid is not None and issuer.jwks_url is not None:
            # The issuer may have rotated keys since we fetched; _jwks limits how often a kid can force this.
            keys = await self._jwks(issuer, refresh=True)
            key = _select_key(keys, kid)
        if key is not None:
            return key
        where = f"the JWKS of issuer {issuer.issuer!r}"
        if not keys:
            raise AuthenticationError(f"{where} has no usable {issuer.algorithm} key")
        if kid is None:
            raise AuthenticationError(f"token has no kid and {where} has {len(keys)} keys")
        raise AuthenticationError(f"token kid {_shown(kid)} is not in {where}")

    async def _jwks(self, issuer: JwtIssuer, *, refresh: bool) -> tuple[jwt.PyJWK, ...]:
        """The issuer's keys, loaded when missing or stale; `refresh` asks for a (rate-limited) refetch."""
        cache = self._caches[issuer.issuer]
        async with cache.lock:  # one load per issuer at a time; waiters then see its result
            now = self._clock()
            since_attempt = now - cache.attempted_at
            if cache.keys is not None:
                if issuer.jwks_file is not None:
                    return cache.keys
                if refresh and since_attempt < _REFETCH_INTERVAL_SECONDS:
                    return cache.keys
                if not refresh and now - cache.loaded_at < issuer.jwks_cache_seconds:
                    return cache.keys
            if cache.failed and since_attempt < _REFETCH_INTERVAL_SECONDS:
                # Fail fast instead of making every request wait for a down issuer.
                raise AuthenticationError(f"cannot fetch JWKS for issuer {issuer.issuer!r} (recent attempt failed)")
            cache.attempted_at = now
            try:
                keys = await (self._read_file(issuer) if issuer.jwks_file is not None else self._fetch(issuer))
            except AuthenticationError:
                cache.failed = True
                raise
            cache.keys, cache.loaded_at, cache.failed = keys, now, False
            return keys

    async def _read_file(self, issuer: JwtIssuer) -> tuple[jwt.PyJWK, ...]:
        """Load a JWKS file in a worker thread."""
        path = Path(issuer.jwks_file or "")
        try:
            text = await asyncio.to_thread(path.read_text, encoding="utf-8")
            return _parse_jwks(json.loads(text), issuer.algorithm)
        except (OSError, ValueError) as exc:
            reason = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else str(exc)
            _log.warning("cannot load JWKS file %s for issuer %r: %s", path, issuer.issuer, reason)
            raise AuthenticationError(f"cannot load JWKS for issuer {issuer.issuer!r}") from None

    async def _fetch(self, issuer: JwtIssuer) -> tuple[jwt.PyJWK, ...]:
        """Fetch and parse a JWKS URL, giving up after the timeout."""
        url = issuer.jwks_url or ""
        timeout = aiohttp.ClientTimeout(total=_FETCH_TIMEOUT_SECONDS)
        try:
            async with self._session().get(url, timeout=timeout, headers={"Accept": "application/json"}) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP status {resp.status}")
                body = await _read_limited(resp.content)
            return _parse_jwks(json.loads(body), issuer.algorithm)
        except TimeoutError:
            reason = f"no complete answer within {_FETCH_TIMEOUT_SECONDS:g} s"
        except aiohttp.ClientError as exc:
            reason = type(exc).__name__  # str(exc) can carry the URL
        except ValueError as exc:
            reason = str(exc)
        _log.warning("cannot fetch JWKS for issuer %r: %s", issuer.issuer, reason)
        raise AuthenticationError(f"cannot fetch JWKS for issuer {issuer.issuer!r}")

    def _session(self) -> aiohttp.ClientSession:
        """The injected session, or one created on first use (inside the event loop) and closed by aclose."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
            self._owns_http = True
        return self._http

    def _check_times(self, claims: Mapping[str, object], issuer: JwtIssuer) -> None:
        """`exp` (required), `nbf` and `iat` against the injected clock, with the issuer's leeway."""
        now, leeway = self._clock(), issuer.leeway_seconds
        exp = _timestamp(claims, "exp")
        if exp is None:
            raise AuthenticationError("token has no exp claim")
        if exp <= now - leeway:
            raise AuthenticationError("token expired")
        nbf = _timestamp(claims, "nbf")
        if nbf is not None and nbf > now + leeway:
            raise AuthenticationError("token not yet valid")
        iat = _timestamp(claims, "iat")
        if iat is not None and iat > now + leeway:
            raise AuthenticationError("token issued in the future")


def _prepare_secret(secret: SecretStr, algorithm: str, where: str) -> bytes:
    """The HMAC key bytes; refuses key material PyJWT rejects and secrets shorter than RFC 7518 allows."""
    hmac = jwt.get_algorithm_by_name(algorithm)
    try:
        key: bytes = hmac.prepare_key(secret.get_secret_value())
    except jwt.InvalidKeyError:
        raise ConfigError(f"{where}.secret: looks like a public or private key, not an HMAC secret") from None
    if hmac.check_key_length(key) is not None:
        # PyJWT would only warn, on every request; a short secret is a configuration error.
        minimum = int(algorithm[2:]) // 8
        raise ConfigError(f"{where}.secret: {algorithm} needs at least {minimum} bytes (RFC 7518 §3.2)")
    return key


async def _read_limited(stream: aiohttp.StreamReader) -> bytes:
    """The whole body, refusing more than _MAX_JWKS_BYTES."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > _MAX_JWKS_BYTES:
            raise ValueError(f"response larger than {_MAX_JWKS_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_jwks(document: object, algorithm: str) -> tuple[jwt.PyJWK, ...]:
    """The keys of a JWKS document usable with the pinned algorithm; others are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    keys = []
    for entry in document["keys"]:
        # Private keys are never published; refuse rather than verify with one.
        if not isinstance(entry, dict) or "d" in entry:
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", algorithm) != algorithm:
            continue
        try:
            key = jwt.PyJWK(entry, algorithm=algorithm)
            key.Algorithm.prepare_key(key.key)  # rejects e.g. a P-384 key for ES256
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        keys.append(key)
    return tuple(keys)


def _select_key(keys: Sequence[jwt.PyJWK], kid: str | None) -> jwt.PyJWK | None:
    """The key with this kid; without a kid, the only key if there is exactly one."""
    if kid is None:
        return keys[0] if len(keys) == 1 else None
    return next((k for k in keys if k.key_id == kid), None)


def _decode(token: str, issuer: JwtIssuer, key: bytes | jwt.PyJWK) -> dict[str, Any]:
    """Check the signature (pinned algorithm only), `iss` and `aud`; the caller checks time claims."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[issuer.algorithm],
            audience=issuer.audience,
            issuer=issuer.issuer,
            options={
                "require": ["exp"],
                "verify_exp": False,  # PyJWT reads the wall clock; _check_times uses the injected one
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": issuer.audience is not None,
            },
        )
    except jwt.MissingRequiredClaimError as exc:
        raise AuthenticationError(f"token has no {exc.claim} claim") from None
    except jwt.PyJWTError as exc:
        message = next((m for kind, m in _PYJWT_MESSAGES if isinstance(exc, kind)), "invalid token")
        raise AuthenticationError(message) from None
    return claims


def _timestamp(claims: Mapping[str, object], name: str) -> float | None:
    """A NumericDate claim, or None when absent; NaN, infinities and non-numbers are refused."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthenticationError(f"token {name} claim is not a valid timestamp")
    return float(value)


def _lookup(claims: Mapping[str, object], path: str) -> object:
    """The value at a dotted path, or None. A top-level key that itself contains dots wins."""
    if path in claims:  # namespaced claims such as "https://example.com/team"
        return claims[path]
    node: object = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


MAX_IDENTITY_CHARS = 200  # subject and team, as the request log's columns hold them


def _text_claim(claims: Mapping[str, object], path: str, field: str) -> str | None:
    """A string (or integer) claim, stripped; None when absent or empty."""
    value = _lookup(claims, path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise AuthenticationError(f"token {field} claim ({path!r}) must be a string")
    text = str(value).strip()
    if len(text) > MAX_IDENTITY_CHARS or "\x00" in text:
        # The request log keeps subjects and teams in 200-character columns: two long subjects sharing their
        # first 200 characters would otherwise become one caller there (and in feedback's ownership check).
        raise AuthenticationError(
            f"token {field} claim ({path!r}) is too long (at most {MAX_IDENTITY_CHARS} characters) or holds NUL"
        )
    return text or None


def _names_claim(claims: Mapping[str, object], path: str, field: str) -> tuple[str, ...]:
    """A list of strings, or one string separated by spaces or commas; absent means none."""
    value = _lookup(claims, path)
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[str] = _NAME_SEPARATORS.split(value)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        raise AuthenticationError(f"token {field} claim ({path!r}) must be a string or a list of strings")
    return tuple(dict.fromkeys(s for s in (i.strip() for i in items) if s))


def _principal(claims: dict[str, Any], issuer: JwtIssuer, token: str) -> Principal:
    """Map verified claims to the caller through the issuer's ClaimMapping."""
    mapping = issuer.claims
    subject = _text_claim(claims, mapping.subject, "subject")
    if subject is None:
        raise AuthenticationError(f"token has no subject claim ({mapping.subject!r})")
    team = _text_claim(claims, mapping.team, "team") or mapping.default_team
    if team is None:
        raise AuthenticationError(
            f"token has no team claim ({mapping.team!r}) and issuer {issuer.issuer!r} sets no default_team"
        )
    return Principal(
        subject=subject,
        team=team,
        groups=_names_claim(claims, mapping.groups, "groups"),
        roles=_names_claim(claims, mapping.roles, "roles"),
        auth="jwt",
        claims=dict(claims),
        token=token,
    )


def _shown(value: object) -> str:
    """An untrusted value, quoted and cut short, for an error message."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:_SHOWN_CHARS] + ("…" if len(text) > _SHOWN_CHARS else ""))
