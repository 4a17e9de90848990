"""The dashboard's template environment and per-request language: templates call ``_()``
and the time helpers of ``i18n``; the language comes from the person's cookie, else config."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fastapi import Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from fleet_server.dashboard import i18n
from fleet_server.dashboard.settings import DashboardSettings

TEMPLATES = Path(__file__).resolve().parent / "templates"


def make_env() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    env.globals.update(
        _=i18n.t, when=i18n.when, ago=i18n.ago, num=i18n.num,
        since=lambda ts: Markup(i18n.since_html(ts)),  # noqa: S704 (escaped inside)
        lang=lambda: i18n.current().lang, now=time.time,
    )  # fmt: skip
    return env


def locale_dependency(
    settings: DashboardSettings,
) -> Callable[[Request], Coroutine[Any, Any, None]]:
    """A router dependency (async, so the context variable reaches the sync endpoint)."""

    async def set_locale(request: Request) -> None:
        lang = i18n.pick(request.cookies.get(i18n.COOKIE), settings.language)
        i18n.use(i18n.Locale(lang, settings.timezone))

    return set_locale


def safe_next(target: str) -> str:
    """Where to go back after switching language: only a dashboard path of this server."""
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui/"):
        return "/ui/"
    if "\\" in target or target.startswith("//"):
        return "/ui/"
    return urllib.parse.urlunsplit(("", "", parts.path, parts.query, ""))
