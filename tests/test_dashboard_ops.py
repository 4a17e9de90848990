"""The operations room (issue 19): problems first, Vietnamese and English with no string
missing from the catalogue, local times and relative times, hostile names escaped. Rendered
from a real database (rows as ingest, enrollment, commissioning and rollouts store them)."""

from __future__ import annotations

import re
import time

import pytest

from firmware import contract
from fleet_server.dashboard import fleet_pages, i18n, problems, views
from fleet_server.dashboard.env import make_env, safe_next
from fleet_server.dashboard.settings import DashboardSettings
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.health.alerts import Alert, AlertBook
from fleet_server.health.rules import RuleThresholds
from fleet_server.identity.model import Commissioning, IssuedCertificate, Site
from fleet_server.ingest.events import Event
from fleet_server.ingest.registry import Accepted, Registry
from fleet_server.migrate import upgrade
from fleet_server.rollouts import model as rm

EVIL = '<script>alert("x")</script> مرحبا ' + "Ngã tư " * 30  # 256 at most (the schema)


@pytest.fixture
def registry(database_url: str) -> Registry:
    upgrade(database_url)
    return Registry(make_sessionmaker(make_engine(database_url)), AlertBook(RuleThresholds()))


def _msg(kind: str, device: str, body: dict[str, object], at: float) -> Accepted:
    topic, payload, _q, _r = contract.encode(kind, device, body, at)
    return Accepted(*contract.decode(topic, payload), at)


def _beat(device: str, at: float, **fields: object) -> Accepted:
    body = {"seq": 0, "kind": "agent", "interval_s": 30, "uptime_s": 1.0, **fields}
    return _msg("heartbeat", device, body, at)


def _fleet(registry: Registry) -> float:
    """cam-a offline (an hour ago), cam-b with a scene alert, cam-c with a critical alert and
    a certificate about to expire, cam-d failed its update in a running rollout; one halted
    rollout; cam-a stands at a site whose name is hostile."""
    now = time.time()
    registry.apply([_beat(d, now - 3600) for d in ("cam-a", "cam-b", "cam-c", "cam-d", "cam-e")])
    registry.apply([_msg("status", "cam-a", {"state": "offline", "kind": "agent",
                                             "reason": "power cut"}, now - 3500)])  # fmt: skip
    with registry.sessions.begin() as db:
        db.add(Site(site_id="evil", name=EVIL, lat=21.18, lon=106.07, updated_at=now))
        db.flush()
        db.add(Commissioning(record_id="r-a", device_id="cam-a", site_id="evil", record={},
                             signature="s", certificate_serial="ab", reference_frame=None,
                             submitted_by="tech", received_at=now))  # fmt: skip
        db.add_all([
            Alert(device_id="cam-b", rule="scene", severity="warning", state="open",
                  message="scene: dark", opened_at=now - 600),
            Alert(device_id="cam-c", rule="temperature", severity="critical", state="open",
                  message="temperature 95 °C", opened_at=now - 60),
            IssuedCertificate(serial="01", device_id="cam-c", not_before=now - 86400,
                              not_after=now + 3 * 86400, issued_at=now - 86400, via="enroll"),
            IssuedCertificate(serial="02", device_id="cam-e", not_before=now - 86400,
                              not_after=now + 300 * 86400, issued_at=now - 86400, via="enroll"),
        ])  # fmt: skip
        for cid, state in (("c-run", rm.RUNNING), ("c-halt", rm.HALTED)):
            db.add(rm.Campaign(
                id=cid, name=f"release {cid}", artifact="agent", release="1.2.0", target="t",
                filter={}, waves=[], wave_ends=[], success_threshold=0.9, failure_threshold=0.1,
                soak_s=0, rate_per_min=10, windows=[], device_deadline_s=600, state=state,
                reason="too many failures" if state == rm.HALTED else None,
                created_at=now - 7200, created_by="op", updated_at=now - 1800))  # fmt: skip
        db.add(
            rm.CampaignDevice(
                campaign_id="c-run",
                device_id="cam-d",
                wave=0,
                position=0,
                state=rm.FAILED,
                state_at=now - 900,
                error="hash mismatch",
            )
        )
        db.add(Event(event_id="cam-b-c1", device_id="cam-b", seq=1, type="counts", ts=now - 60,
                     received_at=now, data={"lines": {"l1": {"Car": {"in": 3}}}}))  # fmt: skip
    return now


def test_problems_most_severe_then_oldest_with_site(registry: Registry) -> None:
    now = _fleet(registry)
    with registry.sessions() as db:
        found = problems.gather(db, now, cert_warn_days=30)
    order = [(p.kind, p.subject) for p in found.rows]
    assert order == [
        ("offline", "cam-a"),  # critical, an hour ago
        ("rollout", "release c-halt"),  # critical, 30 min ago
        ("alert", "cam-c"),  # critical, a minute ago
        ("certificate", "cam-c"),  # critical (3 days), "since" is its expiry: last
        ("update", "cam-d"),  # warnings, oldest first
        ("scene", "cam-b"),
    ]
    assert found.counts == {"offline": 1, "alert": 1, "scene": 1, "certificate": 1,
                            "update": 1, "rollout": 1}  # fmt: skip
    assert found.rows[0].site == EVIL and "power cut" in found.rows[0].detail
    assert found.rows[1].href == "/ui/rollouts/c-halt"


def test_problems_cap_keeps_counts(registry: Registry) -> None:
    now = time.time()
    registry.apply([_beat(f"cam-{i:03d}", now - 100) for i in range(30)])
    registry.apply([_msg("status", f"cam-{i:03d}", {"state": "offline", "kind": "agent"},
                         now - 50 + i) for i in range(30)])  # fmt: skip
    with registry.sessions() as db:
        found = problems.gather(db, now, 30, limit=10)
    assert found.counts["offline"] == 30 and len(found.rows) == 10
    assert [p.subject for p in found.rows] == [f"cam-{i:03d}" for i in range(10)]  # oldest


def _render_all(registry: Registry, lang: str) -> dict[str, str]:
    env = make_env()
    i18n.use(i18n.Locale(lang, "Asia/Ho_Chi_Minh"))
    nav = views.NAV + [(h, n) for h, n, _r in fleet_pages.PAGES]
    common = {"nav": nav, "refresh_s": 15}
    out = {}
    with registry.sessions() as db:
        ctx = views.overview_context(db, 30)
        out["overview"] = env.get_template("overview.html").render(here="/ui/", title="o",
                                                                  **common, **ctx)  # fmt: skip
        ctx = views.device_list_context(db, "", "", "", 0)
        out["devices"] = env.get_template("devices.html").render(here="/ui/devices", title="d",
                                                                **common, **ctx)  # fmt: skip
        for dev in ("cam-a", "cam-b", "cam-c", "cam-d"):
            dctx = views.device_context(db, dev, fleet_pages.SECTIONS)
            assert dctx is not None
            out[dev] = env.get_template("device.html").render(here="/ui/devices", title=dev,
                                                             **common, **dctx)  # fmt: skip
        rows = db.scalars(Alert.__table__.select()).all()
        out["alerts"] = env.get_template("alerts.html").render(
            here="/ui/alerts", title="a", alerts=views._alert_rows(
                [db.get(Alert, r) for r in rows]), show_all=False, **common)  # fmt: skip
        for href, _name, make in fleet_pages.PAGES:
            if href.startswith("/ui/rollouts"):
                continue  # the rollouts feature's own pages (not translated yet)
            title, html = make(db)
            out[href] = env.get_template("page.html").render(here=href, title=title,
                                                            content=html, **common)  # fmt: skip
    return out


def test_every_string_is_in_the_vietnamese_catalogue(registry: Registry) -> None:
    _fleet(registry)
    i18n.MISSING.clear()
    vi = _render_all(registry, "vi")
    assert not i18n.MISSING, f"missing from catalogue_vi.py: {sorted(i18n.MISSING)}"
    en = _render_all(registry, "en")
    assert "Cần xử lý" in vi["overview"] and "Needs attention" in en["overview"]
    assert 'lang="vi"' in vi["overview"] and 'lang="en"' in en["overview"]
    for page, html in {**vi, **en}.items():
        assert "<script>alert" not in html, page  # the hostile site name is escaped
    assert "&lt;script&gt;alert" in vi["overview"]
    # the catalogue keeps every {field} of its source text
    for src, dst in i18n.CATALOGUES["vi"].items():
        assert re.findall(r"{\w+}", src) == re.findall(r"{\w+}", dst), src


def test_times_are_local_and_relative() -> None:
    i18n.use(i18n.Locale("vi", "Asia/Ho_Chi_Minh"))
    ts = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC
    assert i18n.when(ts) == "29/05/2026 03:26:40"  # UTC+7
    assert i18n.ago(ts - 240, now=ts) == "4 phút trước"
    assert i18n.ago(ts + 180, now=ts) == "sau 3 phút"  # a device clock ahead of the server's
    assert i18n.num(12345.5, 1) == "12.345,5"
    i18n.use(i18n.Locale("en", "Asia/Ho_Chi_Minh"))
    assert i18n.when(ts) == "2026-05-29 03:26:40"
    assert i18n.ago(ts - 3 * 86400, now=ts) == "3 days ago"
    assert i18n.num(12345.5, 1) == "12,345.5"
    assert 'datetime="2026-05-29T03:26:40+07:00"' in i18n.since_html(ts, now=ts)


def test_settings_and_language_redirects_stay_on_the_dashboard() -> None:
    assert DashboardSettings().language == "vi"
    with pytest.raises(ValueError):
        DashboardSettings(timezone="Mars/Olympus")
    with pytest.raises(ValueError):
        DashboardSettings(tiles_url="javascript:alert(1)")
    assert safe_next("/ui/devices?state=offline") == "/ui/devices?state=offline"
    for bad in ("https://evil.example/", "//evil.example/ui/", "/api/x", "/ui/\\evil"):
        assert safe_next(bad) == "/ui/"
