"""Dashboard sessions kept on the server.

Signing in with an API token opens a session: the browser gets a random session id (``cfs_``
+ 32 random bytes) in an HttpOnly, SameSite=Strict cookie; the server keeps only its SHA-256
with the person, the API token it was opened with, an absolute expiry and who revoked it.
A session is valid while it is unexpired and unrevoked, its person is not disabled and its
API token is not revoked. Signing out revokes it on the server, so a copied cookie is dead
afterwards; an admin lists and revokes sessions (``/api/sessions``). A new sign-in always
gets a fresh id (an id planted in the browser beforehand is never adopted), and the session
it replaces in that browser is revoked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.access import audit
from fleet_server.access.audit import Actor
from fleet_server.identity import tokens
from fleet_server.identity.model import ApiToken, UiSession, User

SESSION_PREFIX = "cfs_"
# last_seen is written at most this often per session (a page view is a read, not a write)
_TOUCH_S = 60.0


@dataclass(frozen=True)
class SessionInfo:
    id: int
    user_name: str
    created_at: float
    expires_at: float
    last_seen: float
    source: str
    revoked_at: float | None
    revoked_by: str | None


class UiSessions:
    def __init__(self, sessions: sessionmaker[Session], lifetime_s: float) -> None:
        self.sessions = sessions
        self.lifetime_s = lifetime_s

    def open(self, actor: Actor, api_token: str, replaces: str | None = None) -> str:
        """A new session for ``actor`` (signed in with ``api_token``); the session id,
        to be handed to the browser only. ``replaces``: the browser's previous session id,
        revoked here."""
        sid = tokens.new_token(SESSION_PREFIX)
        now = time.time()
        with self.sessions.begin() as db:
            row = UiSession(
                sid_hash=tokens.token_hash(sid),
                user_name=actor.name,
                token_hash=tokens.token_hash(api_token),
                created_at=now,
                expires_at=now + self.lifetime_s,
                last_seen=now,
                source=actor.source[:64],
            )
            db.add(row)
            if replaces and tokens.well_formed(replaces, SESSION_PREFIX):
                _revoke_where(db, UiSession.sid_hash == tokens.token_hash(replaces), actor, now)
            db.flush()
            audit.record(db, actor, "session.open", actor.name, detail={"session": row.id})
        return sid

    def identify(self, sid: str, source: str) -> Actor | None:
        """The person of a live session, or None."""
        if not tokens.well_formed(sid, SESSION_PREFIX):
            return None
        now = time.time()
        digest = tokens.token_hash(sid)
        with self.sessions() as db:
            row = db.execute(
                select(UiSession.id, UiSession.last_seen, User.name, User.role, User.disabled,
                       ApiToken.revoked_at.label("token_revoked"))
                .join(User, User.name == UiSession.user_name)
                .join(ApiToken, ApiToken.token_hash == UiSession.token_hash)
                .where(UiSession.sid_hash == digest, UiSession.revoked_at.is_(None),
                       UiSession.expires_at > now)
            ).first()  # fmt: skip
        if row is None or row.disabled or row.token_revoked is not None:
            return None
        if now - row.last_seen > _TOUCH_S:
            with self.sessions.begin() as db:
                db.execute(update(UiSession).where(UiSession.id == row.id).values(last_seen=now))
        return Actor(row.name, row.role, source)

    def close(self, sid: str, actor: Actor) -> bool:
        """Sign-out: revoke the session this id opens; False when it was not live."""
        if not tokens.well_formed(sid, SESSION_PREFIX):
            return False
        now = time.time()
        with self.sessions.begin() as db:
            n = _revoke_where(db, UiSession.sid_hash == tokens.token_hash(sid), actor, now)
            if n:
                audit.record(db, actor, "session.close", actor.name)
        return n > 0

    def revoke(self, session_id: int, by: Actor) -> SessionInfo | None:
        """An admin ends a session by its number; None when there is no such session."""
        now = time.time()
        with self.sessions.begin() as db:
            row = db.get(UiSession, session_id)
            if row is None:
                return None
            _revoke_where(db, UiSession.id == session_id, by, now)
            audit.record(db, by, "session.revoke", row.user_name, detail={"session": session_id})
            db.flush()
            db.refresh(row)
            return _info(row)

    def list(self, live_only: bool = True, limit: int = 500) -> list[SessionInfo]:
        now = time.time()
        query = select(UiSession).order_by(UiSession.id.desc()).limit(limit)
        if live_only:
            query = query.where(UiSession.revoked_at.is_(None), UiSession.expires_at > now)
        with self.sessions() as db:
            return [_info(r) for r in db.scalars(query).all()]


def _revoke_where(db: Session, cond: object, by: Actor, now: float) -> int:
    done = db.execute(
        update(UiSession)
        .where(cond, UiSession.revoked_at.is_(None))  # type: ignore[arg-type]
        .values(revoked_at=now, revoked_by=by.name[:64])
    )
    return int(getattr(done, "rowcount", 0) or 0)


def _info(r: UiSession) -> SessionInfo:
    return SessionInfo(r.id, r.user_name, r.created_at, r.expires_at, r.last_seen, r.source,
                       r.revoked_at, r.revoked_by)  # fmt: skip
