"""The operators' dashboard in real headless Chromium (Debian's), with a small fleet of
simulated devices on the real broker and server; a screenshot of every page."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from firmware import contract
from fleet_server.dashboard import svg
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests import province as province_seed
from hil_tests.identity import IdentityServer
from hil_tests.procs import Broker, wait_for
from tests.mqtt_helpers import Client

FLEET = [f"dash-{i:02d}" for i in range(8)]
HOT = "dash-03"  # reports 95 °C: an open temperature alert, shown as degraded
GONE = "dash-06"  # says offline
LATE = "dash-05"  # goes offline while the overview is open
REFRESH_S = 2


def test_svg_chart_and_map_are_built_from_the_numbers() -> None:
    chart = svg.line_chart("CPU <load>", [(10.0, 5.0), (0.0, 1.0), (20.0, 3.0)], "%")
    assert "CPU &lt;load&gt;" in chart  # escaped
    assert chart.count("<polyline") == 1
    assert ">3%<" in chart  # the latest value, by time not by order given
    assert "no data yet" in svg.line_chart("empty", [])
    pts = [svg.MapPoint("a", 45.0, 7.0, "online", "/ui/devices/a"),
           svg.MapPoint("b", 45.1, 7.2, "offline", "/ui/devices/b")]  # fmt: skip
    m = svg.site_map(pts)
    assert m.count("<circle") == 2
    assert 'class="site offline"' in m and "km</text>" in m
    assert svg.nice_step(7.3) == 5 and svg.nice_step(0.23) == 0.2


def _publish_fleet(broker: Broker, make: Callable[[str], DeviceCredentials]) -> None:
    for i, dev_id in enumerate(FLEET):
        creds = make(dev_id)
        cl = Client(broker.port, creds.root_pem, creds.cert_pem, creds.key_pem, dev_id)
        for seq in range(3):
            body = {"seq": seq, "kind": "node" if i % 4 == 0 else "agent", "interval_s": 60,
                    "uptime_s": 10.0 * seq, "cpu_pct": 10.0 + 5 * seq + i,
                    "temp_c": 95.0 if dev_id == HOT else 40.0 + seq,
                    "versions": {"agent": "0.1.0" if i % 2 else "0.2.0"}}  # fmt: skip
            cl.publish(*contract.encode("heartbeat", dev_id, body, time.time() - 3 + seq)[:2])
        if dev_id == GONE:
            body = {"state": "offline", "kind": "agent", "reason": "shutdown"}
            cl.publish(*contract.encode("status", dev_id, body, time.time())[:2], retain=True)
        cl.close()


@pytest.fixture(scope="module")
def dash_broker(
    ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    # its own broker: retained statuses of other tests' devices would join this fleet
    broker = Broker(ca, tmp_path_factory.mktemp("dash-broker")).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def fleet_server(
    ca: CertificateAuthority, device_factory: Callable[[str], DeviceCredentials],
    tmp_path_factory: pytest.TempPathFactory, dash_broker: Broker,
) -> Iterator[IdentityServer]:  # fmt: skip
    broker = dash_broker
    srv = IdentityServer(tmp_path_factory.mktemp("dash"), ca, broker,
                         extra={"dashboard": {"refresh_s": REFRESH_S}})  # fmt: skip
    srv.start_all()
    _publish_fleet(broker, device_factory)
    wait_for(lambda: srv.get("/api/alerts?active=true")[1]["total"] >= 2, 15,
             what="temperature and offline alerts")  # fmt: skip
    yield srv
    srv.stop()


def _sign_in(page: object, token: str) -> None:
    page.goto(page.url.split("/ui/")[0] + "/ui/login")  # type: ignore[attr-defined]
    page.fill("#login-token", token)  # type: ignore[attr-defined]
    page.click("#login")  # type: ignore[attr-defined]
    page.wait_for_url("**/ui/")  # type: ignore[attr-defined]
    page.goto(page.url + "lang/en")  # type: ignore[attr-defined]  # these checks read English


def test_dashboard_pages_in_chromium(
    fleet_server: IdentityServer, browser: object, tmp_path: Path
) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    base = fleet_server.base_url

    page.goto(base + "/ui/devices")  # not signed in: sent to the sign-in page
    assert page.url.endswith("/ui/login")
    page.fill("#login-token", "cf_api_wrong")
    page.click("#login")
    page.wait_for_selector("#msg.error")
    assert "refused" in page.inner_text("#msg")
    _sign_in(page, fleet_server.add_user("wall-screen", "viewer"))
    page.goto(base + "/")  # redirects to the overview
    assert page.inner_text("#n-total") == str(len(FLEET))
    assert page.inner_text("#n-offline") == "1"
    assert page.inner_text("#n-degraded") == "1"
    assert "0.2.0" in page.inner_text("#versions")
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

    page.goto(base + "/ui/devices")
    assert page.locator("tr.device-row").count() == len(FLEET)
    page.select_option("#state-filter", "offline")
    page.click("#apply")
    page.wait_for_url("**state=offline**")
    assert page.locator("tr.device-row").count() == 1
    assert GONE in page.inner_text("#devices")
    page.fill("#search", "dash-0")
    page.select_option("#state-filter", "degraded")
    page.click("#apply")
    page.wait_for_url("**state=degraded**")
    assert [t.strip() for t in page.locator("tr.device-row td:first-child").all_inner_texts()] == [
        HOT
    ]
    page.select_option("#state-filter", "")
    page.select_option("#kind-filter", "node")
    page.click("#apply")
    page.wait_for_url("**kind=node**")
    assert page.locator("tr.device-row").count() == 2
    page.screenshot(path=str(tmp_path / "devices.png"), full_page=True)

    page.goto(f"{base}/ui/devices/{HOT}")
    assert page.locator("svg.chart").count() >= 2  # CPU and temperature at least
    assert "Temperature" in page.inner_text("main")
    assert "temperature" in page.inner_text("table.alerts")
    page.screenshot(path=str(tmp_path / "device.png"), full_page=True)

    page.goto(base + "/ui/alerts")
    row = page.locator("table.alerts tr", has_text=HOT)
    alert_id = int(str(row.get_attribute("id")).removeprefix("alert-"))
    row.locator("button.ack").click()  # a viewer may look, not act: refused, nothing changes
    page.wait_for_selector("#msg.error")
    assert "403" in page.inner_text("#msg")
    assert fleet_server.get(f"/api/alerts?device_id={HOT}")[1]["items"][0]["state"] == "open"
    page.click("#logout")
    page.wait_for_url("**/ui/login")
    _sign_in(page, fleet_server.add_user("op-ana", "operator"))
    page.goto(base + "/ui/alerts")
    row = page.locator("table.alerts tr", has_text=HOT)
    row.locator("button.ack").click()
    # (no wait_for_function: the page's CSP refuses the eval it needs)
    page.wait_for_selector(f"#alert-{alert_id} .alert-state:text-is('acknowledged')")
    page.screenshot(path=str(tmp_path / "alerts.png"), full_page=True)
    # the click changed the server, not only the page
    acked = fleet_server.get(f"/api/alerts?device_id={HOT}")[1]["items"][0]
    assert (acked["state"], acked["acknowledged_by"]) == ("acknowledged", "op-ana")

    page.goto(base + "/ui/sites")  # no commissioning in this fleet: the empty map says so
    assert "no sites commissioned yet" in str(page.text_content("svg.map"))
    page.screenshot(path=str(tmp_path / "sites.png"), full_page=True)
    page.goto(base + "/ui/counts")
    assert "no counts in this period" in page.inner_text("#no-counts")
    page.screenshot(path=str(tmp_path / "counts.png"), full_page=True)

    for name in ("overview", "devices", "device", "alerts", "sites", "counts"):
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert errors == []
    assert all(u.startswith(base) for u in requests), "a page fetched something remote"


def test_overview_updates_itself_and_speaks_both_languages(
    fleet_server: IdentityServer, browser: object, dash_broker: Broker,
    device_factory: Callable[[str], DeviceCredentials], tmp_path: Path,
) -> None:  # fmt: skip
    page = browser.new_page()  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(fleet_server.base_url + "/ui/login")
    _sign_in(page, fleet_server.add_user("ops-room", "viewer"))
    page.click("#lang-vi")  # the choice is kept in a cookie, for every page after
    page.wait_for_url("**/ui/")
    assert page.inner_text("header a.here") == "Tổng quan"
    assert page.inner_text("h1") == "Cần xử lý"
    page.goto(fleet_server.base_url + "/ui/alerts")
    assert page.inner_text("h1") == "Cảnh báo"
    page.goto(fleet_server.base_url + "/ui/")
    assert page.locator(f'tr.problem[data-subject="{GONE}"]').count() == 1
    assert page.locator(f'tr.problem[data-subject="{LATE}"]').count() == 0
    page.evaluate("window.__notReloaded = true")
    page.evaluate("window.scrollTo(0, 50)")
    creds = device_factory(LATE)
    cl = Client(dash_broker.port, creds.root_pem, creds.cert_pem, creds.key_pem, LATE)
    body = {"state": "offline", "kind": "agent", "reason": "power cut"}
    went = time.monotonic()
    cl.publish(*contract.encode("status", LATE, body, time.time())[:2], retain=True)
    cl.close()
    # within one refresh interval (plus the page's own fetch), without a reload
    page.wait_for_selector(f'tr.problem[data-subject="{LATE}"]', timeout=(REFRESH_S + 3) * 1000)
    assert time.monotonic() - went < REFRESH_S + 3
    assert page.evaluate("window.__notReloaded") is True
    assert "power cut" in page.inner_text(f'tr.problem[data-subject="{LATE}"]')
    assert "mất kết nối" in page.inner_text("#summary")
    page.screenshot(path=str(tmp_path / "overview-vi.png"), full_page=True)
    # the server stops answering: the header says the page is stale
    page.route("**/ui/", lambda route: route.abort())
    page.wait_for_selector("#live-status.stale", timeout=(REFRESH_S + 3) * 1000)
    assert "dữ liệu cũ" in page.inner_text("#live-status")
    page.unroute("**/ui/")
    page.wait_for_selector("#live-status:not(.stale)", timeout=(REFRESH_S + 3) * 1000)
    page.click("#lang-en")
    page.wait_for_url("**/ui/")
    assert page.inner_text("h1") == "Needs attention"
    assert page.inner_text("header a.here") == "Overview"
    errors = [e for e in errors if "ERR_FAILED" not in e]  # the aborted fetches above
    assert errors == []


N_PROVINCE = 1000
GONE_PV = ("pv-0005", "pv-0013")  # at two sites: their last heartbeat is an hour old
HOT_PV = ("pv-0007", "pv-0021", "pv-0030")
SHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"
SAME_IN_BOTH = {"camfleet", "CSV", "CPU", "Tiếng Việt", "English", "+", "\u2212", "", "N"}


@pytest.fixture(scope="module")
def province(fleet_server: IdentityServer) -> dict[str, str]:
    """1,000 more devices at the 40 sites of hil_tests/province.py, with a day of counts at
    every site, snapshots and two certificates about to expire (written as ingest and
    commissioning store them, into the running server's database)."""
    url = f"sqlite:///{fleet_server.config_path.parent / 'fleet.db'}"
    sessions = make_sessionmaker(make_engine(url))
    devices = [f"pv-{i:04d}" for i in range(N_PROVINCE)]
    now = time.time()
    reg = province_seed.registry(sessions)
    reg.apply([province_seed.heartbeat(d, now, 3600.0) for d in devices if d not in GONE_PV])
    reg.apply([province_seed.heartbeat(d, now - 3600, 60.0) for d in GONE_PV])  # go offline
    for k in range(2):  # two hot heartbeats open an alert: their sites show degraded
        reg.apply([province_seed.heartbeat(d, now + 1 + k, 3600.0, temp_c=91.0) for d in HOT_PV])
    placed = province_seed.seed_sites(sessions, devices, now)
    first_at_site = devices[: len(province_seed.SITES)]
    province_seed.seed_counts(sessions, first_at_site, hours=24, now=now)
    province_seed.seed_snapshots(sessions, devices[:10], now)
    province_seed.seed_certificates(sessions, devices[:50], expiring=devices[:2], now=now)
    return placed


def _labels(page: object) -> list[str]:
    """The page's own words: headings, table heads, navigation, buttons, labels."""
    sel = "h1, h2, th, header a, header button, button, label, #summary, #problem-counts"
    return [s.strip() for s in page.locator(sel).all_inner_texts()]  # type: ignore[attr-defined]


def test_province_in_chromium(
    fleet_server: IdentityServer, browser: object, province: dict[str, str]
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    base = fleet_server.base_url
    page.goto(base + "/ui/login")
    _sign_in(page, fleet_server.add_user("province-room", "viewer"))
    started = time.monotonic()
    page.goto(base + "/ui/")
    took = time.monotonic() - started
    assert page.inner_text("#n-total") == f"{len(FLEET) + N_PROVINCE:,}"
    assert page.locator("tr.problem.kind-certificate").count() == 2
    for dev in (*GONE_PV, *HOT_PV):  # the server marked the two offline by itself
        page.wait_for_selector(f'tr.problem[data-subject="{dev}"]', timeout=10_000)
    assert took < 10, f"overview with {N_PROVINCE} devices took {took:.1f} s"
    page.screenshot(path=str(SHOTS / "overview.png"))

    page.goto(base + "/ui/sites")  # every commissioned site is on the map, alone or clustered
    shown = page.eval_on_selector_all(
        "#map [data-site], #map [data-sites]",
        "els => els.flatMap(e => (e.dataset.site || e.dataset.sites).split(' '))",
    )
    assert sorted(shown) == sorted(s[0] for s in province_seed.SITES)
    assert "km" in str(page.text_content("#map-scale"))
    page.screenshot(path=str(SHOTS / "map.png"))
    page.click("#zoom-in")
    page.wait_for_url("**z=**")
    one = page.locator("#map circle.site").first
    site_id = one.get_attribute("data-site")
    page.locator("#map a.site-link").first.click()
    page.wait_for_selector(f"#pop-{site_id}", state="visible")
    assert "pv-" in page.inner_text(f"#pop-{site_id}")
    page.screenshot(path=str(SHOTS / "map-popup.png"))

    page.goto(base + "/ui/counts")
    assert page.locator("svg.chart").count() == len(province_seed.SITES)
    assert page.locator("svg.chart text.time").count() >= 4 * len(province_seed.SITES)
    page.screenshot(path=str(SHOTS / "counts.png"))
    csv_resp = page.request.get(base + "/api/export/counts.csv")
    rows = list(csv.DictReader(io.StringIO(csv_resp.text())))
    assert {r["site_id"] for r in rows} == {s[0] for s in province_seed.SITES}
    ngsi = json.loads(page.request.get(base + "/api/export/counts.ngsi-ld.json").text())
    assert ngsi and {e["type"] for e in ngsi} == {"TrafficFlowObserved"}

    page.goto(base + "/ui/events?type=snapshot")
    assert page.locator("tr.event-row").count() == 20
    # (no wait_for_function: the page's CSP refuses the eval it needs)
    wait_for(lambda: page.eval_on_selector("img.thumb", "i => i.naturalWidth") > 0, 10,
             what="the first snapshot thumbnail decoded")  # fmt: skip
    page.screenshot(path=str(SHOTS / "events.png"))
    page.locator("tr.event-row a").first.click()
    page.wait_for_url("**/ui/events/pv-*/seed-s-*")
    assert page.locator("img.snapshot").count() == 1

    # every visible word of each page changes with the language
    pages = ["/ui/", "/ui/devices", "/ui/alerts", "/ui/sites", "/ui/counts", "/ui/events",
             f"/ui/devices/{HOT}"]  # fmt: skip
    english = {}
    for path in pages:
        page.goto(base + path)
        english[path] = _labels(page)
    page.goto(base + "/ui/lang/vi")
    site_names = {name for _id, name, _lat, _lon in province_seed.SITES}  # data, not words
    for path in pages:
        page.goto(base + path)
        vi = _labels(page)
        assert len(vi) == len(english[path]), path
        same = [(e, v) for e, v in zip(english[path], vi, strict=True)
                if e == v and e not in SAME_IN_BOTH and e not in site_names]  # fmt: skip
        assert same == [], f"{path}: not translated: {same}"
        name = path.removeprefix("/ui").strip("/").replace("/", "-") or "overview"
        page.screenshot(path=str(SHOTS / f"vi-{name}.png"))
    assert errors == []
    assert all(u.startswith(base) for u in requests), "a page fetched something remote"
