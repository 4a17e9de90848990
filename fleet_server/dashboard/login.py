"""Dashboard sign-in: a person signs in with their API token and gets a server-side session
(``fleet_server.access.sessions``) whose random id is the HttpOnly, SameSite=Strict cookie;
sign-out revokes it. Every page needs a signed-in reader, else it sends them to sign in."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from fleet_server.access import audit
from fleet_server.access.audit import Actor
from fleet_server.access.auth import (
    ADMIN,
    COOKIE,
    READERS,
    Authenticator,
    client_address,
    same_origin,
)

LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Sign in · camfleet</title><link rel="stylesheet" href="/ui/static/app.css">
<script src="/ui/static/app.js" defer></script></head><body>
<header><span class="brand">camfleet</span></header><main>
<h1>Sign in</h1><div id="msg" class="msg" hidden></div>
<p>Your API token (from <code>camfleet-server add-user</code> or an admin):</p>
<p><input id="login-token" type="password" size="48" autocomplete="off">
<button id="login" data-action="sign-in">sign in</button></p></main></body></html>"""


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=256)


def _auth(request: Request) -> Authenticator:
    auth: Authenticator | None = getattr(request.app.state, "camfleet_auth", None)
    if auth is None:
        raise HTTPException(503, "authentication is not set up on this server")
    return auth


def ui_reader(request: Request) -> Actor:
    """The signed-in person, or a redirect to the sign-in page."""
    sid = request.cookies.get(COOKIE, "")
    actor = _auth(request).ui.identify(sid, client_address(request)) if sid else None
    if actor is None or actor.role not in (*READERS, ADMIN):
        raise HTTPException(status_code=303, headers={"Location": "/ui/login"})
    return actor


UiReader = Annotated[Actor, Depends(ui_reader)]


def login_router() -> APIRouter:
    router = APIRouter(prefix="/ui", include_in_schema=False)

    @router.get("/login", response_class=HTMLResponse)
    def login_page() -> HTMLResponse:
        return HTMLResponse(LOGIN_PAGE)

    @router.post("/login", status_code=204)
    def login(body: LoginIn, request: Request, response: Response) -> None:
        auth = _auth(request)
        if not same_origin(request):  # no sign-in into someone else's account from elsewhere
            raise HTTPException(403, "sign in from the dashboard's own page")
        source = client_address(request)
        actor = auth.identify(body.token, source)
        if actor is None:
            audit.record_now(auth.sessions, Actor("unknown", "none", source), "ui.login", "",
                             "refused:bad_token")  # fmt: skip
            raise HTTPException(401, "API token not valid")
        audit.record_now(auth.sessions, actor, "ui.login", "", "ok")
        # always a fresh id: a cookie planted before sign-in is never adopted, only ended
        sid = auth.ui.open(actor, body.token, replaces=request.cookies.get(COOKIE))
        response.set_cookie(COOKIE, sid, max_age=int(auth.ui.lifetime_s), httponly=True,
                            samesite="strict", secure=request.url.scheme == "https",
                            path="/")  # fmt: skip

    @router.post("/logout", status_code=204)
    def logout(request: Request, response: Response) -> None:
        if not same_origin(request):
            raise HTTPException(403, "sign out from the dashboard's own page")
        sid = request.cookies.get(COOKIE, "")
        if sid:
            auth = _auth(request)
            source = client_address(request)
            who = auth.ui.identify(sid, source) or Actor("unknown", "none", source)
            auth.ui.close(sid, who)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")

    return router
