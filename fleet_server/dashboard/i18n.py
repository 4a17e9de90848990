"""The dashboard's languages: a catalogue per language (English is the source text), the
language of the page being rendered (a context variable, set once per request), and times
in the province's zone, absolute and relative ("4 phút trước" / "4 min ago").

A string missing from the Vietnamese catalogue is shown in English and remembered in
``MISSING`` (the tests fail on any)."""

from __future__ import annotations

import contextvars
import datetime as dt
import time
from dataclasses import dataclass
from html import escape
from zoneinfo import ZoneInfo

from fleet_server.dashboard.catalogue_vi import VI

LANGUAGES = ("vi", "en")
COOKIE = "camfleet_lang"
# English is the source text, but for the few keys that are names, not text
EN = {
    "kind:offline": "offline", "kind:alert": "alert", "kind:scene": "scene health",
    "kind:certificate": "certificate", "kind:update": "update failed",
    "kind:rollout": "rollout halted", "kind:quarantine": "quarantined",
    "kind:flooding": "flooding", "kind:loss": "events lost",
}  # fmt: skip
CATALOGUES: dict[str, dict[str, str]] = {"vi": VI, "en": EN}
MISSING: set[str] = set()


@dataclass(frozen=True)
class Locale:
    lang: str = "vi"
    zone: str = "Asia/Ho_Chi_Minh"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)


_FALLBACK = Locale("en")  # outside a request (tests, tools): the source text
_current: contextvars.ContextVar[Locale] = contextvars.ContextVar("camfleet_locale")


def use(locale: Locale) -> None:
    """The language and zone of what this request renders from here on."""
    _current.set(locale)


def current() -> Locale:
    return _current.get(_FALLBACK)


def pick(cookie: str | None, default: str) -> str:
    return cookie if cookie in LANGUAGES else default


def t(msg: str, **values: object) -> str:
    """``msg`` (English) in the current language, with ``{name}`` fields filled in."""
    lang = current().lang
    found = CATALOGUES[lang].get(msg)
    if found is not None:
        msg = found
    elif lang != "en":
        MISSING.add(msg)
    return msg.format(**values) if values else msg


def num(n: float, digits: int = 0) -> str:
    """A number with the language's separators: 12,345.6 (en) or 12.345,6 (vi)."""
    text = f"{n:,.{digits}f}"
    if current().lang == "vi":
        text = text.replace(",", "\0").replace(".", ",").replace("\0", ".")
    return text


def local(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, current().tz)


def when(ts: float | None) -> str:
    """Absolute local time: 06/12/2026 20:05:09 (vi) or 2026-12-06 20:05:09 (en)."""
    if ts is None:
        return t("never")
    d = local(ts)
    if current().lang == "vi":
        return d.strftime("%d/%m/%Y %H:%M:%S")
    return d.strftime("%Y-%m-%d %H:%M:%S")


def ago(ts: float | None, now: float | None = None) -> str:
    """Relative time: "4 min ago"; a time ahead of the server's clock says "in 3 min"."""
    if ts is None:
        return t("never")
    delta = (time.time() if now is None else now) - ts
    ahead = delta < -5
    s = abs(delta)
    if s < 45:
        text = t("{n} s", n=int(s))
    elif s < 3600:
        text = t("{n} min", n=round(s / 60))
    elif s < 48 * 3600:
        text = t("{n} h", n=round(s / 3600))
    else:
        text = t("{n} days", n=round(s / 86400))
    return t("in {span}", span=text) if ahead else t("{span} ago", span=text)


def since_html(ts: float | None, now: float | None = None) -> str:
    """A <time> element: the relative time, the absolute local one beside it."""
    if ts is None:
        return f'<span class="muted">{escape(t("never"))}</span>'
    iso = local(ts).isoformat(timespec="seconds")
    return (
        f'<time datetime="{iso}" data-ts="{ts:.0f}">{escape(ago(ts, now))}</time> '
        f'<span class="abs">{escape(when(ts))}</span>'
    )
