"""Dashboard sign-in: credentials to sessions, sessions to viewers, cookies and CSRF tokens.

- Sign-in takes what the API takes — a virtual key (a team member), an admin key, or a JWT from a configured issuer
  (an admin when it carries an admin role) — through `Gateway.authenticate`, so the dashboard and the API agree on
  who someone is. The credential is not kept: the session records the principal it resolved to.
- The session id is 256 random bits in an `HttpOnly; SameSite=Strict` cookie (`Secure` unless `ui.cookie_secure` is
  off for plain-HTTP localhost); the store keeps only its sha256. A session ends at logout, after `ui.session_hours`,
  when a JWT's `exp` passes, or when the virtual key it was made with is revoked or expires.
- CSRF: every state-changing form carries a token bound to the session (an HMAC of the session id, so it needs no
  storage and cannot be computed from the database); the sign-in form, before any session exists, uses a
  double-submit cookie. SameSite=Strict is a second line, not the only one.
- Planes: with `server.admin_port` set, admin credentials sign in only on the admin port's `/ui`; the public
  port's `/ui` serves team members. The two planes use different cookie names.

Owns: tokens, cookies and the sign-in/resolve rules. Must not: render pages or query anything but sessions and keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, cast

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response

from gengate.app.gateway import Gateway
from gengate.errors import AuthenticationError, PermissionDenied
from gengate.store.schema import ui_sessions
from gengate.store.ui_sessions import UiSession, UiSessionStore
from gengate.types import Principal

LOGIN_COOKIE = "gengate_ui_login"


def hash_id(session_id: str) -> str:
    """What the store keeps of a session id."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def csrf_token(session_id: str) -> str:
    """The session's CSRF token (derived, never stored)."""
    return hmac.new(session_id.encode(), b"gengate-ui-csrf", hashlib.sha256).hexdigest()


def tokens_match(expected: str, presented: str | None) -> bool:
    """Constant-time comparison of a token with what a form presented."""
    return bool(presented) and hmac.compare_digest(expected.encode(), (presented or "").encode())


@dataclass(frozen=True, slots=True)
class Plane:
    """Where a dashboard is mounted and who may sign in there."""

    prefix: str
    cookie: str
    admins: bool  # admin credentials accepted (the admin port, or the public one when there is no admin port)
    secure: bool
    session_hours: float
    # One roll-up of the request log at a time in this process (see gengate.store.ui_rollups).
    rollup_lock: asyncio.Lock = field(default_factory=asyncio.Lock, compare=False)
    # Experiment analyses by (name, status, stop time): (when computed, the analysis); see pages/experiments.
    analyses: dict[tuple[str, str, float | None], tuple[float, Any]] = field(default_factory=dict, compare=False)

    def set_cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        """Set an HttpOnly, SameSite=Strict cookie scoped to the dashboard's path."""
        response.set_cookie(
            name, value, max_age=max_age, path=self.prefix, secure=self.secure, httponly=True, samesite="strict"
        )

    def clear_cookie(self, response: Response, name: str) -> None:
        """Remove a cookie set by `set_cookie`."""
        response.delete_cookie(name, path=self.prefix, secure=self.secure, httponly=True, samesite="strict")


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in person looking at a page."""

    session: UiSession
    session_id_hash: str
    csrf: str

    @property
    def admin(self) -> bool:
        """Admins see every team."""
        return self.session.admin

    @property
    def team(self) -> str | None:
        """The team every query is limited to; None for admins."""
        return None if self.session.admin else self.session.team

    @property
    def label(self) -> str:
        """How the header names the viewer."""
        role = "admin" if self.session.admin else f"team {self.session.team}"
        return f"{self.session.subject} ({role})"


def _expiry(principal: Principal, plane: Plane, now: float) -> float:
    expires = now + plane.session_hours * 3600
    exp = principal.claims.get("exp") if principal.auth == "jwt" else None
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        expires = min(expires, float(exp))
    return expires


async def sign_in(gateway: Gateway, plane: Plane, credential: str) -> tuple[str, UiSession]:
    """Check a credential and open a session; (session id for the cookie, the stored session)."""
    credential = credential.strip()
    if not credential or any(c.isspace() for c in credential):
        raise AuthenticationError("enter an API key or a token")
    principal, record = await gateway.authenticate(f"Bearer {credential}")
    if principal.is_admin and not plane.admins:
        raise PermissionDenied("admin sign-in is served on the admin port's dashboard")
    for name, value in (("subject", principal.subject), ("team", principal.team)):
        # Refused, never cut to fit: a session scopes every page to its team (and PostgreSQL stores no NUL).
        if len(value) > (cast(sa.String, ui_sessions.c[name].type).length or 0) or "\x00" in value:
            raise AuthenticationError(f"the token's {name} is too long or not text: it cannot open a dashboard session")
    now = time.time()
    expires = _expiry(principal, plane, now)
    if record is not None and record.expires_at is not None:
        expires = min(expires, record.expires_at)
    session_id = secrets.token_urlsafe(32)
    session = UiSession(
        id_hash=hash_id(session_id), subject=principal.subject, team=principal.team, groups=principal.groups,
        admin=principal.is_admin, auth=principal.auth, key_id=principal.key_id, created_at=now, expires_at=expires,
    )  # fmt: skip
    await UiSessionStore(gateway.store.engine).create(session)
    return session_id, session


async def resolve(request: Request, gateway: Gateway, plane: Plane) -> Viewer | None:
    """The viewer behind the request's session cookie, or None (no cookie, unknown, expired, key revoked)."""
    session_id = request.cookies.get(plane.cookie)
    if not session_id or len(session_id) > 128:
        return None
    id_hash = hash_id(session_id)
    sessions = UiSessionStore(gateway.store.engine)
    session = await sessions.get(id_hash)
    if session is None or (session.admin and not plane.admins):
        return None
    if session.key_id is not None:
        record = await gateway.store.get_key(session.key_id)
        if record is None or not record.active(time.time()):
            await sessions.delete(id_hash)
            return None
    return Viewer(session, id_hash, csrf_token(session_id))


async def sign_out(gateway: Gateway, viewer: Viewer) -> None:
    """End the viewer's session."""
    await UiSessionStore(gateway.store.engine).delete(viewer.session_id_hash)
