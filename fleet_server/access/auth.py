"""People, roles and API tokens, and the FastAPI dependency that checks them.

Roles: ``admin`` (everything, manages people), ``operator`` (runs the fleet: revokes
devices, reads the audit log, creates tokens), ``technician`` (creates enrollment tokens
for devices and submits commissioning records, nothing else). ``admin`` passes every
check. A route declares what it needs::

    @router.post("/things", dependencies=[Depends(require_role("operator"))])
    def make(who: Annotated[Actor, Depends(require_role("operator"))]) -> ...

``require_role`` finds the ``Authenticator`` on ``app.state.camfleet_auth`` (set by the
identity router's lifespan, ``fleet_server.identity.api``); other features reuse it as is
and may add roles to ``ROLES``. Every refusal is written to the audit log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.access import audit
from fleet_server.access.audit import Actor
from fleet_server.access.sessions import UiSessions
from fleet_server.identity import tokens
from fleet_server.identity.model import ApiToken, User

log = logging.getLogger(__name__)

ADMIN = "admin"
OPERATOR = "operator"
TECHNICIAN = "technician"
VIEWER = "viewer"  # reads only (dashboards on a wall, reporting)
ROLES: set[str] = {ADMIN, OPERATOR, TECHNICIAN, VIEWER}


class AuthError(Exception):
    """A user or token cannot be made (unknown role, name taken, ...)."""


# a dashboard session's default life (``[api] session_s``)
SESSION_S = 12 * 3600


class Authenticator:
    def __init__(self, sessions: sessionmaker[Session], session_s: float = SESSION_S) -> None:
        self.sessions = sessions
        self.ui = UiSessions(sessions, session_s)  # dashboard sessions (cookie)

    def create_user(self, name: str, role: str, by: Actor) -> str:
        """Make a person with a role and return their first API token (shown once)."""
        if role not in ROLES:
            raise AuthError(f"unknown role {role!r}; one of {sorted(ROLES)}")
        if not (1 <= len(name) <= 64) or not name.replace("-", "").replace(".", "").isalnum():
            raise AuthError("user names are 1-64 letters, digits, '-' and '.'")
        token = tokens.new_token(tokens.API_PREFIX)
        now = time.time()
        with self.sessions.begin() as db:
            if db.get(User, name) is not None:
                raise AuthError(f"user {name!r} exists")
            db.add(User(name=name, role=role, created_at=now, created_by=by.name, disabled=False))
            db.flush()
            db.add(ApiToken(token_hash=tokens.token_hash(token), user_name=name, created_at=now))
            audit.record(db, by, "user.create", name, detail={"role": role})
        log.info("user %s created with role %s by %s", name, role, by.name)
        return token

    def identify(self, token: str, source: str) -> Actor | None:
        if not tokens.well_formed(token, tokens.API_PREFIX):
            return None
        with self.sessions() as db:
            row = db.execute(
                select(User.name, User.role, User.disabled, ApiToken.revoked_at)
                .join(ApiToken, ApiToken.user_name == User.name)
                .where(ApiToken.token_hash == tokens.token_hash(token))
            ).first()
        if row is None or row.disabled or row.revoked_at is not None:
            return None
        return Actor(row.name, row.role, source)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def same_origin(request: Request) -> bool:
    """A state-changing request made with the session cookie must be the dashboard's own
    ``fetch``: JSON (a cross-site form cannot send it without a CORS preflight, which is
    never granted) and, when the browser says where it comes from, from this origin
    (SameSite=Strict still sends the cookie from another port of the same host)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


# the dashboard's cookie: a server-side session id (fleet_server.access.sessions), never a token
COOKIE = "camfleet_session"
# Everyone with an account may read the fleet's state.
READERS = (VIEWER, TECHNICIAN, OPERATOR)

# What every route behind ``require_role`` may answer besides its own codes (for OpenAPI).
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "No API token, or not a valid one"},
    403: {"description": "The token's role may not do this"},
}


def require_role(*roles: str) -> Callable[..., Actor]:
    """A FastAPI dependency: the caller's ``Actor`` if its role is one of ``roles``
    (admin always passes); 401 without a valid token, 403 for another role."""
    allowed = set(roles) | {ADMIN}
    unknown = set(roles) - ROLES
    if unknown:
        raise AuthError(f"unknown roles {sorted(unknown)}")

    def dependency(
        request: Request,
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Actor:
        auth: Authenticator | None = getattr(request.app.state, "camfleet_auth", None)
        if auth is None:
            raise HTTPException(503, "authentication is not set up on this server")
        source = client_address(request)
        action = f"{request.method} {request.url.path}"
        sid = request.cookies.get(COOKIE)
        if not authorization and sid:
            # the dashboard: a server-side session (HttpOnly, SameSite=Strict cookie)
            if request.method not in SAFE_METHODS and not same_origin(request):
                audit.record_now(auth.sessions, Actor("unknown", "none", source), action, "",
                                 "refused:cross_origin")  # fmt: skip
                raise HTTPException(403, "a dashboard request must come from the dashboard")
            actor = auth.ui.identify(sid, source)
        else:
            scheme, _, token = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise HTTPException(
                    401, "an API token is required", headers={"WWW-Authenticate": "Bearer"}
                )
            actor = auth.identify(token.strip(), source)
        if actor is None:
            audit.record_now(
                auth.sessions, Actor("unknown", "none", source), action, "", "refused:bad_token"
            )
            raise HTTPException(401, "API token not valid", headers={"WWW-Authenticate": "Bearer"})
        if actor.role not in allowed:
            audit.record_now(auth.sessions, actor, action, "", "refused:role")
            raise HTTPException(403, f"role {actor.role} may not do this; needs {sorted(roles)}")
        return actor

    return dependency
