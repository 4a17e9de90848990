"""The operations room (issue 19): problems first, Vietnamese and English with no string
missing from the catalogue, local times and relative times, hostile names escaped. Rendered
from a real database (rows as ingest, enrollment, commissioning and rollouts store them)."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path

import pytest

from firmware import contract
from fleet_server.dashboard import (
    charts,
    exports,
    fleet_pages,
    i18n,
    ops_data,
    ops_views,
    problems,
    sitemap,
    views,
)
from fleet_server.dashboard.env import make_env, safe_next
from fleet_server.dashboard.settings import DashboardSettings
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.health.alerts import Alert, AlertBook
from fleet_server.health.rules import RuleThresholds
from fleet_server.identity.model import Commissioning, IssuedCertificate, Site
from fleet_server.ingest.events import Event
from fleet_server.ingest.quarantine import QuarantinedDevice
from fleet_server.ingest.registry import Accepted, Registry
from fleet_server.migrate import upgrade
from fleet_server.receipts.model import EventStream
from fleet_server.rollouts import model as rm
from hil_tests import demo_province, province

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
        db.add(EventStream(device_id="cam-b", lost=7, updated_at=now - 300))
        db.add(EventStream(device_id="cam-c", lost=3, updated_at=now - 3 * 86400))
        db.add(QuarantinedDevice(device_id="cam-e", since=now - 120, by="op-lan",
                                 reason="500 messages/s", automatic=False))  # fmt: skip
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
        ("quarantine", "cam-e"),  # critical, two minutes ago
        ("alert", "cam-c"),  # critical, a minute ago
        ("certificate", "cam-c"),  # critical (3 days), "since" is its expiry: last
        ("update", "cam-d"),  # warnings, oldest first
        ("scene", "cam-b"),
        ("loss", "cam-b"),  # lost events five minutes ago (cam-c's were days ago: not listed)
    ]
    assert found.counts == {"offline": 1, "alert": 1, "scene": 1, "certificate": 1,
                            "update": 1, "rollout": 1, "quarantine": 1, "flooding": 0,
                            "loss": 1}  # fmt: skip
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
        now = time.time()
        marks = ops_data.site_marks(db)
        out["sites"] = sitemap.render(marks, sitemap.fit(marks, 860, 540)) + ops_views._site_table(
            marks, 1
        )
        out["sites-empty"] = sitemap.render([], sitemap.fit([], 860, 540))
        names = {"tu-son": "Ngã tư"}
        rows = ops_data.count_rows(db, now - 86400, now)
        out["counts"] = ops_views._counts_html(rows, names, now, 1, "")
        out["counts-empty"] = ops_views._counts_html([], names, now, 7, "")
        evs, total, where = ops_data.find_events(db, ops_data.EventFilter())
        query = {"site": "", "device": "", "label": "", "type": "", "hours": 24}
        out["events"] = ops_views._events_html(evs, total, where, names, query, 0)
        out["events-empty"] = ops_views._events_html([], 0, {}, {}, query, 0)
        out["event"] = "".join(ops_views._event_html(e, "tu-son") for e in evs)
        for href, _name, make in fleet_pages.PAGES:
            if href.startswith("/ui/rollouts"):
                continue  # the rollouts feature's own pages (not translated yet)
            title, html = make(db)
            out[href] = env.get_template("page.html").render(here=href, title=title,
                                                            content=html, **common)  # fmt: skip
    return out


def test_every_string_is_in_the_vietnamese_catalogue(registry: Registry) -> None:
    _fleet(registry)
    _counts_fleet(registry)
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


# --- the sites map -------------------------------------------------------------------


def _marks(n: int, spread: float = 0.3) -> list[sitemap.Mark]:
    states = ("online", "offline", "degraded", "unknown")
    return [
        sitemap.Mark(f"s-{i:05d}", f"Site {i}", 21.0 + spread * ((i * 37) % 101) / 101,
                     105.9 + spread * ((i * 53) % 97) / 97, states[i % 4])
        for i in range(n)
    ]  # fmt: skip


def _shown(svg_html: str) -> list[str]:
    """Every site on the map: alone, or inside a cluster."""
    alone = re.findall(r'data-site="([^"]+)"', svg_html)
    grouped = [i for ids in re.findall(r'data-sites="([^"]+)"', svg_html) for i in ids.split()]
    return alone + grouped


def test_map_shows_every_site_clustered_when_zoomed_out() -> None:
    marks = _marks(60)
    view = sitemap.fit(marks, 860, 540)
    html = sitemap.render(marks, view)
    assert sorted(_shown(html)) == sorted(m.site_id for m in marks)
    far = sitemap.render(marks, sitemap.View(view.z - 3, view.lat, view.lon))
    assert sorted(_shown(far)) == sorted(m.site_id for m in marks)
    assert far.count('class="cluster ') >= 1 and far.count("data-site=") < html.count("data-site=")
    # a cluster takes the worst state of its sites and zooms in two levels
    assert re.search(r'class="cluster offline"', far)
    assert f"z={view.z - 1}" in far
    assert (html.count('class="popup"') == 60 and "km</text>" in html) or " m</text>" in html
    assert "°E</text>" in html and "°N</text>" in html  # the projected grid, no tiles


def test_map_scale_and_tiles() -> None:
    view = sitemap.View(12, 21.18, 106.07)
    html = sitemap.render(_marks(3), view)
    km = re.search(r'id="map-scale">([\d.]+) (k?m)<', html)
    assert km is not None
    # at zoom 12, 21.2° N: 156543 * cos(lat) / 4096 ≈ 35.6 m per pixel; 120 px ≈ 4.3 km -> 2 km
    assert (km.group(1), km.group(2)) == ("2", "km")
    tiled = sitemap.render(_marks(3), view, "https://tiles.example.vn/{z}/{x}/{y}.png")
    assert '<image href="https://tiles.example.vn/12/' in tiled and "°E</text>" not in tiled
    x, y = sitemap.world(21.18, 106.07, 12)
    assert f"/12/{int(x // 256)}/{int(y // 256)}.png" in tiled  # the tile under the centre


def test_map_with_no_sites_and_with_ten_thousand() -> None:
    empty = sitemap.render([], sitemap.fit([], 860, 540))
    assert 'id="no-sites"' in empty
    marks = _marks(10_000, spread=1.0)
    started = time.perf_counter()
    html = sitemap.render(marks, sitemap.fit(marks, 860, 540))
    took = time.perf_counter() - started
    assert len(_shown(html)) == 10_000
    assert html.count("<circle") < 700  # clustered, not ten thousand dots
    assert took < 3.0, f"{took:.2f} s"


def test_site_marks_from_commissioning(registry: Registry) -> None:
    _fleet(registry)
    with registry.sessions.begin() as db:
        db.add(Event(event_id="cam-a-s1", device_id="cam-a", seq=5, type="snapshot",
                     ts=time.time() - 30, received_at=time.time(),
                     data={"jpeg": "/9j/", "label": "Car"}))  # fmt: skip
    with registry.sessions() as db:
        marks = ops_data.site_marks(db)
    (m,) = marks
    assert (m.site_id, m.state, m.devices) == ("evil", "offline", ("cam-a",))
    assert m.snapshot is not None and m.snapshot[:2] == ("cam-a", "cam-a-s1")
    html = sitemap.render(marks, sitemap.fit(marks, 860, 540))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert (
        "/api/events/cam-a-s1/snapshot.jpg?device_id=cam-a" in html
        and "/ui/events/cam-a/cam-a-s1" in html
    )


# --- charts ----------------------------------------------------------------------------


def test_chart_time_axis_gaps_and_a_single_point() -> None:
    i18n.use(i18n.Locale("en", "Asia/Ho_Chi_Minh"))
    t0 = 1_780_000_000.0 - 1_780_000_000.0 % 3600  # a whole UTC hour
    pts = [(t0 + i * 60, float(i)) for i in range(10)] + [(t0 + 7200 + i * 60, 5.0)
                                                          for i in range(5)]  # fmt: skip
    html = charts.time_chart("CPU", [charts.Series("CPU", pts)], "%", t0, t0 + 3 * 3600, 180)
    assert html.count("<polyline") == 2  # the hour without data is a gap
    ticks = re.findall(r'class="axis time">(\d\d:\d\d)<', html)
    assert ticks and all(tk.endswith(":00") or tk.endswith(":30") for tk in ticks)
    assert local_hour(t0) in [tk[:2] for tk in ticks]  # local (UTC+7) labels, not UTC
    assert ">%</text>" in html and "UTC+07:00" in html
    one = charts.time_chart("T", [charts.Series("T", [(t0, 40.0)])], "°C", t0 - 600, t0 + 600, 90)
    assert one.count('class="dot"') == 1 and "<polyline" not in one
    assert "no data yet" in charts.time_chart("E", [], "", t0, t0 + 60, 1)
    assert charts.runs([(0, 1), (10, 1), (100, 1)], 20) == [[(0, 1), (10, 1)], [(100, 1)]]


def local_hour(ts: float) -> str:
    return i18n.local(ts).strftime("%H")


# --- counts, exports, events -----------------------------------------------------------


def _counts_fleet(registry: Registry) -> float:
    now = time.time()
    with registry.sessions.begin() as db:
        db.add(Site(site_id="tu-son", name="Ngã tư Từ Sơn", lat=21.1189, lon=105.9606,
                    updated_at=now))  # fmt: skip
        db.flush()
        db.add(Commissioning(record_id="r-c", device_id="cam-c1", site_id="tu-son", record={},
                             signature="s", certificate_serial="ab", reference_frame=None,
                             submitted_by="tech", received_at=now))  # fmt: skip
        for i in range(3):
            start = now - 3600 * (i + 1)
            data = {"start_ts": start, "end_ts": start + 300,
                    "lines": {"stop line": {"car": {"in": 4 + i, "out": 2},
                                            "person": {"in": 1}, "Truck": {"east": 3}}},
                    "zones": {"crossing": {"person": 2}}}  # fmt: skip
            db.add(Event(event_id=f"cam-c1-c{i}", device_id="cam-c1", seq=i, type="counts",
                         ts=start + 300, received_at=now, data=data))  # fmt: skip
        db.add(
            Event(
                event_id="cam-c1-s1",
                device_id="cam-c1",
                seq=9,
                type="snapshot",
                ts=now - 10,
                received_at=now,
                data={"jpeg": "/9j/", "label": "car"},
            )
        )
    return now


def test_counts_csv_round_trip(registry: Registry) -> None:
    now = _counts_fleet(registry)
    with registry.sessions() as db:
        rows = ops_data.count_rows(db, now - 86400, now)
    text = exports.counts_csv(rows, {"tu-son": "Ngã tư Từ Sơn"})
    back = list(csv.DictReader(io.StringIO(text)))
    assert len(back) == len(rows) == 3 * 5  # 4 line counts + 1 zone count per interval
    total = (4 + 5 + 6) + 3 * (2 + 1 + 3 + 2)  # car in; car out, person, truck, zone
    assert sum(int(r["count"]) for r in back) == sum(r.count for r in rows) == total
    car_in = [r for r in back if r["class"] == "car" and r["direction"] == "in"]
    assert sorted(int(r["count"]) for r in car_in) == [4, 5, 6]
    assert {r["site_name"] for r in back} == {"Ngã tư Từ Sơn"}
    assert all(r["start_utc"].endswith("Z") for r in back)
    hostile = ops_data.CountRow("x", "=cmd|' /C calc'!A0", 0, 1, "-l", "line", "@c", "+d", 1)
    assert "'=cmd" in exports.counts_csv([hostile], {}) and "'-l" in exports.counts_csv(
        [hostile], {}
    )


def _documented_mapping() -> dict[str, tuple[str, str]]:
    """The table in docs/operations.md: attribute -> (NGSI-LD type, unit)."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    section = text.split("## Counts as NGSI-LD", 1)[1]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| ([^|]+?) \|", section, re.M)
    return {name: (kind, unit.strip()) for name, kind, unit in rows}


def test_ngsi_ld_round_trip_against_the_documented_mapping(registry: Registry) -> None:
    now = _counts_fleet(registry)
    with registry.sessions() as db:
        rows = ops_data.count_rows(db, now - 86400, now)
    entities, skipped = exports.traffic_flow_observed(
        rows, {"tu-son": ("Ngã tư Từ Sơn", 21.1189, 105.9606)}
    )
    back = json.loads(json.dumps(entities))
    assert skipped == 3 * 2  # the person crossing and the zone entry, per interval
    assert len(back) == 3 * 3  # car in, car out, truck east
    documented = _documented_mapping()
    assert set(documented) >= set(exports.ATTRIBUTES), "docs/operations.md lacks attributes"
    for e in back:
        assert e["type"] == "TrafficFlowObserved" and e["id"].startswith(
            "urn:ngsi-ld:TrafficFlowObserved:camfleet:cam-c1:stop%20line:"
        )
        assert e["@context"] == exports.CONTEXT
        for name, attr in e.items():
            if name in ("id", "type", "@context"):
                continue
            kind, unit = documented[name]
            assert attr["type"] == kind, name
            assert attr.get("unitCode", "none") == unit, name
        frm, to = e["dateObserved"]["value"].split("/")
        assert e["dateObservedFrom"]["value"] == {"@type": "DateTime", "@value": frm}
        assert e["dateObservedTo"]["value"]["@value"] == to
        assert e["location"]["value"] == {"type": "Point", "coordinates": [105.9606, 21.1189]}
        assert e["vehicleType"]["value"] in ("car", "lorry")
        assert isinstance(e["intensity"]["value"], int) and e["intensity"]["value"] >= 0
    lanes = {(e["vehicleType"]["value"], e.get("laneDirection", {}).get("value")) for e in back}
    assert lanes == {("car", "forward"), ("car", "backward"), ("lorry", None)}
    # car in, car out, truck
    assert sum(e["intensity"]["value"] for e in back) == (4 + 5 + 6) + 3 * 2 + 3 * 3


def test_events_of_the_fleet_filtered(registry: Registry) -> None:
    _counts_fleet(registry)
    _fleet(registry)
    with registry.sessions() as db:
        everything, total, _where = ops_data.find_events(db, ops_data.EventFilter())
        snaps, n_snaps, _w = ops_data.find_events(db, ops_data.EventFilter(type="snapshot"))
        at_site, n_site, _w = ops_data.find_events(db, ops_data.EventFilter(site="tu-son"))
        cars, _n, _w = ops_data.find_events(db, ops_data.EventFilter(label="car"))
        _old, n_old, _w = ops_data.find_events(db, ops_data.EventFilter(until=time.time() - 7000))
    assert total == 5 and [e.ts for e in everything] == sorted((e.ts for e in everything),
                                                                reverse=True)  # fmt: skip
    assert [e.event_id for e in snaps] == ["cam-c1-s1"] and n_snaps == 1
    assert n_site == 4 and {e.device_id for e in at_site} == {"cam-c1"}
    assert [e.event_id for e in cars] == ["cam-c1-s1"]
    assert n_old == 1  # the counts of three hours ago only


def test_demo_province_twice_gives_every_kind_of_problem(registry: Registry) -> None:
    first = demo_province.populate(registry.sessions, ["cam-demo-01", "node-demo-01"])
    again = demo_province.populate(registry.sessions, ["cam-demo-01", "node-demo-01"])
    assert first["counts"] == 40 * 24 and again["counts"] <= 40  # the new hour at most
    with registry.sessions() as db:
        found = problems.gather(db, time.time(), 30)
        marks = ops_data.site_marks(db)
    assert found.counts["alert"] == len(demo_province.HOT)
    assert found.counts["scene"] == len(demo_province.DARK)
    assert found.counts["certificate"] == 2 and found.counts["update"] == 1
    assert len(marks) == len(province.SITES)
    assert {m.state for m in marks} >= {"online", "degraded"}
