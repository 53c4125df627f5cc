"""Dashboard sessions: who logged in to `/ui`, until when, keyed by a hash of the session id.

The session id itself lives only in the browser's cookie; a stolen database yields no usable session. A session
made with a virtual key remembers the key's id so that revoking the key ends it.

Owns: every query on `ui_sessions`. Must not: generate ids, hash them or decide who may log in.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from gengate.store.schema import ui_sessions


@dataclass(frozen=True, slots=True)
class UiSession:
    """A logged-in browser: the principal it acts as and when it ends."""

    id_hash: str
    subject: str
    team: str
    groups: tuple[str, ...]
    admin: bool
    auth: str
    key_id: str | None
    created_at: float
    expires_at: float


class UiSessionStore:
    """Create, find and end dashboard sessions."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, session: UiSession) -> None:
        """Store a new session (and drop expired ones, so the table stays small without a sweeper)."""
        async with self.engine.begin() as conn:
            await conn.execute(ui_sessions.delete().where(ui_sessions.c.expires_at < session.created_at))
            await conn.execute(
                ui_sessions.insert().values(
                    id_hash=session.id_hash, subject=session.subject, team=session.team,
                    groups=json.dumps(list(session.groups)), admin=session.admin, auth=session.auth,
                    key_id=session.key_id, created_at=session.created_at, expires_at=session.expires_at,
                )
            )  # fmt: skip

    async def get(self, id_hash: str, now: float | None = None) -> UiSession | None:
        """The unexpired session with this id hash, if any."""
        now = time.time() if now is None else now
        query = sa.select(ui_sessions).where(ui_sessions.c.id_hash == id_hash, ui_sessions.c.expires_at > now)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        m = row._mapping
        return UiSession(
            id_hash=m["id_hash"], subject=m["subject"], team=m["team"], groups=tuple(json.loads(m["groups"] or "[]")),
            admin=bool(m["admin"]), auth=m["auth"], key_id=m["key_id"], created_at=float(m["created_at"]),
            expires_at=float(m["expires_at"]),
        )  # fmt: skip

    async def delete(self, id_hash: str) -> None:
        """End a session (logout, or its key was revoked)."""
        async with self.engine.begin() as conn:
            await conn.execute(ui_sessions.delete().where(ui_sessions.c.id_hash == id_hash))

    async def delete_for_key(self, key_id: str) -> int:
        """End every session made with a key; the number ended."""
        async with self.engine.begin() as conn:
            result = await conn.execute(ui_sessions.delete().where(ui_sessions.c.key_id == key_id))
        return int(result.rowcount or 0)
