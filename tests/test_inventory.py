"""Device tags and the hardware inventory: the rules, the registry on SQLite and PostgreSQL,
and the REST API of a real server process fed through the real broker."""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.health.inventory import Paths, read_hardware
from firmware import contract
from fleet_server.dashboard.inventory_view import hardware_breakdown, hardware_rows, parse_tags
from fleet_server.db import Device, make_engine, make_sessionmaker
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from fleet_server.ingest.registry import Accepted, Registry
from fleet_server.inventory import store as inventory
from fleet_server.migrate import upgrade
from hil_tests.identity import IdentityServer
from hil_tests.procs import Broker, wait_for
from tests.mqtt_helpers import Client

PI4 = {"model": "Raspberry Pi 4 Model B Rev 1.4", "serial": "10000000abcd", "cpus": 4}
PI5 = {"model": "Raspberry Pi 5 Model B Rev 1.0", "serial": "20000000abcd", "cpus": 4}


# ---------------------------------------------------------------- rules
@pytest.mark.parametrize("tag", ["phase:1", "intersection", "district:north", "a", "x.y_z-1"])
def test_good_tags_pass(tag: str) -> None:
    assert inventory.check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", "Phase", ":x", "-x", "a b", "a/b", "é", "a" * 65, "x,y"])
def test_bad_tags_refused(tag: str) -> None:
    with pytest.raises(inventory.TagError):
        inventory.check_tag(tag)


def test_check_tags_sorts_and_dedups_and_bounds() -> None:
    assert inventory.check_tags(["b", "a", "b"]) == ["a", "b"]
    with pytest.raises(inventory.TagError):
        inventory.check_tags([f"t{i}" for i in range(inventory.MAX_TAGS_PER_DEVICE + 1)])


def test_clean_hardware_keeps_scalars_under_short_keys() -> None:
    raw = {"model": "m" * 300, "cpus": 4, "ok": True, "temp": float("nan"), "nested": {"a": 1},
           "Bad-Key": "x", "list": [1], "mem_mb": 3796.0}  # fmt: skip
    assert inventory.clean_hardware(raw) == {"model": "m" * 128, "cpus": 4, "ok": True,
                                             "mem_mb": 3796.0}  # fmt: skip
    assert inventory.clean_hardware({"nested": {}}) is None
    assert inventory.clean_hardware("Raspberry Pi") is None
    many = {f"k{i:02d}": i for i in range(50)}
    assert len(inventory.clean_hardware(many) or {}) == 32


def test_dashboard_helpers() -> None:
    assert parse_tags("phase:1, District:North  bad/tag") == (
        ["district:north", "phase:1"],
        ["bad/tag"],
    )
    rows = hardware_rows({"zzz": 1, "cpus": 4, "model": "Pi"})
    assert rows == [("board", "Pi"), ("CPUs", "4"), ("zzz", "1")]
    devs = [Device(id=f"d{i}", kind="agent", hardware=PI4 if i < 2 else None) for i in range(3)]
    assert hardware_breakdown(devs) == [(("agent", PI4["model"]), 2), (("agent", "unknown"), 1)]


# ---------------------------------------------------------------- agent inventory reader
def test_agent_reads_a_pi_device_tree(tmp_path: Path) -> None:
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    (tmp_path / "proc/device-tree/serial-number").write_bytes(b"10000000deadbeef\x00")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text('ID=debian\nPRETTY_NAME="Debian GNU/Linux 12"\n')
    sub = tmp_path / "sys/class/video4linux/v4l-subdev0"
    sub.mkdir(parents=True)
    (sub / "name").write_text("imx708 10-001a\n")
    hw = read_hardware("picamera2", Paths(tmp_path))
    assert hw["model"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert hw["serial"] == "10000000deadbeef"
    assert hw["os"] == "Debian GNU/Linux 12"
    assert hw["camera_backend"] == "picamera2" and hw["camera_sensor"] == "imx708 10-001a"
    assert isinstance(hw["cpus"], int) and isinstance(hw["mem_mb"], int) and hw["mem_mb"] > 0


def test_agent_falls_back_to_dmi_and_hashed_machine_id(tmp_path: Path) -> None:
    (tmp_path / "sys/class/dmi/id").mkdir(parents=True)
    (tmp_path / "sys/class/dmi/id/sys_vendor").write_text("LENOVO\n")
    (tmp_path / "sys/class/dmi/id/product_name").write_text("ThinkCentre M75q\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    hw = read_hardware("files", Paths(tmp_path))
    assert hw["model"] == "LENOVO ThinkCentre M75q"
    serial = str(hw["serial"])
    assert serial.startswith("mid-") and len(serial) == 20
    assert "0123456789abcdef" not in serial  # the machine id itself is not sent
    assert "camera_sensor" not in hw  # a file source has no sensor
    # the whole dict fits the contract's heartbeat
    body = {"seq": 0, "kind": "agent", "interval_s": 5, "uptime_s": 1, "hardware": hw}
    contract.encode("heartbeat", "cam-x1", body, time.time())


# ---------------------------------------------------------------- registry
@pytest.fixture
def registry(database_url: str) -> Registry:
    upgrade(database_url)
    return Registry(make_sessionmaker(make_engine(database_url)))


def _hb(device: str, seq: int, hardware: dict[str, Any] | None = None) -> Accepted:
    body: dict[str, Any] = {"seq": seq, "kind": "agent", "interval_s": 5, "uptime_s": seq}
    if hardware is not None:
        body["hardware"] = hardware
    topic, payload, _q, _r = contract.encode("heartbeat", device, body, 1000.0 + seq)
    _dev, _kind, decoded = contract.decode(topic, payload)
    return Accepted(device, "heartbeat", decoded, 1000.0 + seq)


def test_registry_keeps_latest_hardware_and_filters(registry: Registry) -> None:
    registry.apply([_hb("cam-h1", 0, PI4), _hb("cam-h2", 0, PI5), _hb("cam-h3", 0)])
    registry.apply([_hb("cam-h1", 1)])  # a later heartbeat without the inventory keeps it
    dev = registry.get_device("cam-h1")
    assert dev is not None and dev.hardware == PI4
    registry.apply([_hb("cam-h1", 2, PI5)])  # the board was swapped
    dev = registry.get_device("cam-h1")
    assert dev is not None and dev.hardware == PI5
    rows, total = registry.list_devices(hardware="pi 5")
    assert [d.id for d in rows] == ["cam-h1", "cam-h2"] and total == 2
    rows, total = registry.list_devices(hardware="100%")  # LIKE wildcards are literal
    assert (rows, total) == ([], 0)

    with registry.sessions.begin() as db:
        inventory.set_tags(db, "cam-h1", ["phase:1", "district:north"])
        inventory.set_tags(db, "cam-h2", ["phase:1"])
        assert inventory.tag_devices(db, "district:north", ["cam-h2", "cam-h3", "cam-h1"]) == [
            "cam-h2",
            "cam-h3",
        ]
    rows, total = registry.list_devices(tags=["phase:1", "district:north"])
    assert [d.id for d in rows] == ["cam-h1", "cam-h2"] and total == 2
    rows, total = registry.list_devices(tags=["district:north"], hardware="pi 5", limit=1)
    assert [d.id for d in rows] == ["cam-h1"] and total == 2
    assert registry.tags_of(["cam-h3"]) == {"cam-h3": ["district:north"]}
    with registry.sessions.begin() as db:
        assert inventory.set_tags(db, "cam-h1", ["phase:2"]) == (
            ["phase:2"],
            ["district:north", "phase:1"],
        )
        assert inventory.remove_tag(db, "cam-h2", "phase:1")
        assert not inventory.remove_tag(db, "cam-h2", "phase:1")
        assert inventory.tag_counts(db) == [("district:north", 2), ("phase:2", 1)]


# ---------------------------------------------------------------- API on a real server
MakeDevice = Callable[[str], DeviceCredentials]


@pytest.fixture(scope="module")
def inv_broker(
    ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    """Its own broker: sessions other tests' workers left in the shared group would take a
    share of these messages."""
    broker = Broker(ca, tmp_path_factory.mktemp("inv-broker")).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def srv(
    inv_broker: Broker,
    ca: CertificateAuthority,
    device_factory: MakeDevice,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[IdentityServer]:
    """A server with three devices that said hello through the broker (two with an
    inventory, one without)."""
    broker = inv_broker
    server = IdentityServer(tmp_path_factory.mktemp("inv"), ca, broker, client_id="fleet-inv")
    server.start_all()
    for device_id, hw in (("inv-a1", PI4), ("inv-b1", PI5), ("inv-c1", None)):
        creds = device_factory(device_id)
        dev = Client(broker.port, ca.root_cert_path, creds.cert_pem, creds.key_pem)
        body: dict[str, Any] = {"seq": 0, "kind": "agent", "interval_s": 30, "uptime_s": 1}
        if hw is not None:
            body["hardware"] = hw
        topic, payload, qos, _r = contract.encode("heartbeat", device_id, body, time.time())
        dev.publish(topic, payload, qos)
        dev.close()
    wait_for(lambda: server.call("GET", "/api/devices?limit=10")[1]["total"] == 3, 15,
             what="three devices in the registry")  # fmt: skip
    yield server
    server.stop()


def _ids(srv: IdentityServer, query: str) -> list[str]:
    status, body = srv.call("GET", "/api/devices?" + query)
    assert status == 200, body
    return [d["id"] for d in body["items"]]


def _audit(srv: IdentityServer, action: str) -> list[dict[str, Any]]:
    status, rows = srv.call("GET", f"/api/audit?action={action}&limit=50")
    assert status == 200, rows
    return list(rows)


def test_api_shows_hardware_and_filters_by_model(srv: IdentityServer) -> None:
    status, dev = srv.call("GET", "/api/devices/inv-a1")
    assert status == 200
    assert dev["hardware"] == PI4 and dev["tags"] == []
    assert srv.call("GET", "/api/devices/inv-c1")[1]["hardware"] is None
    assert _ids(srv, "hardware=Pi%205") == ["inv-b1"]
    assert _ids(srv, "hardware=raspberry") == ["inv-a1", "inv-b1"]
    assert srv.call("GET", "/api/devices?hardware=")[0] == 422


def test_tag_round_trips_with_audit(srv: IdentityServer) -> None:
    status, out = srv.call("PUT", "/api/devices/inv-a1/tags", {"tags": ["phase:1", "x", "x"]})
    assert status == 200, out
    assert out == {"device_id": "inv-a1", "tags": ["phase:1", "x"], "added": ["phase:1", "x"],
                   "removed": []}  # fmt: skip
    status, out = srv.call("POST", "/api/devices/inv-a1/tags", {"tags": ["district:north"]})
    assert status == 200 and out["tags"] == ["district:north", "phase:1", "x"]
    status, out = srv.call("DELETE", "/api/devices/inv-a1/tags/x")
    assert status == 200 and out["tags"] == ["district:north", "phase:1"]
    assert out["removed"] == ["x"]
    assert srv.call("GET", "/api/devices/inv-a1")[1]["tags"] == ["district:north", "phase:1"]
    actions = {(r["action"], r["target"], r["outcome"]) for r in _audit(srv, "device.tags.set")}
    assert ("device.tags.set", "inv-a1", "ok") in actions
    removed = _audit(srv, "device.tags.remove")
    assert removed[0]["detail"]["removed"] == ["x"] and removed[0]["actor"] == "admin"


def test_tag_api_refuses_bad_input_and_changes_nothing(srv: IdentityServer) -> None:
    srv.call("PUT", "/api/devices/inv-b1/tags", {"tags": ["keep"]})
    for method, path, body in (
        ("PUT", "/api/devices/inv-b1/tags", {"tags": ["Bad Tag"]}),
        ("PUT", "/api/devices/inv-b1/tags", {"tags": "keep"}),
        ("PUT", "/api/devices/inv-b1/tags", {"tags": ["ok"], "extra": 1}),
        ("POST", "/api/devices/inv-b1/tags", {"tags": ["a" * 65]}),
        ("DELETE", "/api/devices/inv-b1/tags/Bad%20Tag", None),
        ("POST", "/api/tags/BAD/devices", {"devices": ["inv-b1"]}),
        ("POST", "/api/tags/ok/devices", {"devices": ["inv-b1"], "filter": {}}),
        ("POST", "/api/tags/ok/devices", {}),
        ("GET", "/api/devices?tag=Bad%20Tag", None),
    ):
        status, out = srv.call(method, path, body)
        assert status == 422, (method, path, status, out)
    assert srv.call("PUT", "/api/devices/inv-zz9/tags", {"tags": ["a"]})[0] == 404
    assert srv.call("DELETE", "/api/devices/inv-b1/tags/nothere")[0] == 404
    status, out = srv.call("POST", "/api/tags/ok/devices", {"devices": ["inv-b1", "inv-zz9"]})
    assert status == 404 and "inv-zz9" in out["detail"]
    assert srv.call("GET", "/api/devices/inv-b1")[1]["tags"] == ["keep"]
    refused = {(r["target"], r["outcome"]) for r in _audit(srv, "device.tags.set")}
    assert ("inv-zz9", "refused:unknown_device") in refused
    removed = {(r["target"], r["outcome"]) for r in _audit(srv, "device.tags.remove")}
    assert ("inv-b1", "refused:no_tag") in removed
    bulk = {(r["target"], r["outcome"]) for r in _audit(srv, "tag.bulk_add")}
    assert ("ok", "refused:unknown_device") in bulk
    # roles: a viewer reads but may not change tags
    viewer = srv.add_user("inv-viewer", "viewer")
    assert srv.call("PUT", "/api/devices/inv-b1/tags", {"tags": ["v"]}, token=viewer)[0] == 403
    assert srv.call("GET", "/api/devices?tag=keep", token=viewer)[0] == 200


def test_bulk_tag_by_list_and_by_filter(srv: IdentityServer) -> None:
    status, out = srv.call("POST", "/api/tags/site:gate/devices",
                           {"devices": ["inv-a1", "inv-c1"]})  # fmt: skip
    assert status == 200 and out == {"tag": "site:gate", "matched": 2, "added": 2}
    status, out = srv.call("POST", "/api/tags/boards:rpi/devices",
                           {"filter": {"hardware": "raspberry", "kind": "agent"}})  # fmt: skip
    assert status == 200 and out == {"tag": "boards:rpi", "matched": 2, "added": 2}
    status, out = srv.call("POST", "/api/tags/boards:rpi/devices",
                           {"filter": {"tags": ["site:gate"]}})  # fmt: skip
    assert status == 200 and out == {"tag": "boards:rpi", "matched": 2, "added": 1}
    assert _ids(srv, "tag=boards:rpi&tag=site:gate") == ["inv-a1", "inv-c1"]
    assert _ids(srv, "tag=boards:rpi&hardware=pi%205") == ["inv-b1"]
    assert _ids(srv, "tag=boards:rpi&tag=site:gate&limit=1&offset=1") == ["inv-c1"]
    status, tags = srv.call("GET", "/api/tags")
    assert status == 200 and {"tag": "boards:rpi", "devices": 3} in tags
    done = [r for r in _audit(srv, "tag.bulk_add") if r["outcome"] == "ok"]
    assert {r["detail"]["added"] for r in done if r["target"] == "boards:rpi"} == {1, 2}


def _page(srv: IdentityServer, path: str) -> str:
    """A dashboard page with the admin's session cookie (what the browser sends)."""
    req = urllib.request.Request(srv.base_url + path)
    req.add_header("Cookie", f"camfleet_session={srv.ui_session()}")
    with urllib.request.urlopen(req, timeout=20) as resp:
        return str(resp.read().decode())


def test_dashboard_shows_tags_and_hardware(srv: IdentityServer) -> None:
    srv.call("PUT", "/api/devices/inv-a1/tags", {"tags": ["dash:one"]})
    html = _page(srv, "/ui/devices/inv-a1")
    assert "dash:one" in html and "Raspberry Pi 4 Model B Rev 1.4" in html
    html = _page(srv, "/ui/devices?tag=dash:one")
    assert "inv-a1" in html and "inv-b1" not in html
    html = _page(srv, "/ui/devices?hardware=pi+5&tag=Bad/Tag")
    assert "inv-b1" in html and "inv-a1" not in html and 'id="bad-tags"' in html
    html = _page(srv, "/ui/")
    assert "Raspberry Pi 5 Model B Rev 1.0" in html


def test_tags_edited_and_filtered_in_chromium(srv: IdentityServer, tmp_path: Path) -> None:
    """The device page's tag editor and the device list's tag and board filters, clicked in
    real headless Chromium (Debian's)."""
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("Debian chromium is not installed (scripts/setup-system.sh installs it)")
    with playwright.sync_playwright() as p:
        args = ["--no-sandbox", "--disable-gpu", "--no-first-run"]
        browser = p.chromium.launch(executable_path=chromium, args=args)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(srv.base_url + "/ui/login")
            page.fill("#login-token", srv.add_user("inv-op", "operator"))
            page.click("#login")
            page.wait_for_url("**/ui/")
            page.goto(srv.base_url + "/ui/lang/en")  # the checks below read English
            assert "Raspberry Pi 5 Model B Rev 1.0" in page.inner_text("#hardware-models")
            page.goto(srv.base_url + "/ui/devices/inv-c1")
            assert "not reported yet" in page.inner_text("#hardware")
            page.fill("#tags-edit", "browser:yes, Night")
            page.click("#save-tags")
            page.wait_for_selector("#msg:not([hidden])")
            assert "tags saved" in page.inner_text("#msg")
            assert page.locator("#tags .tag").all_inner_texts() == ["browser:yes", "night"]
            assert srv.call("GET", "/api/devices/inv-c1")[1]["tags"] == ["browser:yes", "night"]
            page.fill("#tags-edit", "bad/tag")  # refused: a message, nothing changed
            page.click("#save-tags")
            page.wait_for_selector("#msg.error")
            assert "422" in page.inner_text("#msg")
            assert srv.call("GET", "/api/devices/inv-c1")[1]["tags"] == ["browser:yes", "night"]
            page.screenshot(path=str(tmp_path / "device-tags.png"), full_page=True)

            page.goto(srv.base_url + "/ui/devices")
            page.fill("#tag-filter", "browser:yes")
            page.click("#apply")
            page.wait_for_url("**tag=browser**")
            rows = page.locator("tr.device-row td:first-child").all_inner_texts()
            assert [r.strip() for r in rows] == ["inv-c1"]
            page.fill("#tag-filter", "")
            page.fill("#hardware-filter", "Pi 4")
            page.click("#apply")
            page.wait_for_url("**hardware=Pi**")
            rows = page.locator("tr.device-row td:first-child").all_inner_texts()
            assert [r.strip() for r in rows] == ["inv-a1"]
            page.screenshot(path=str(tmp_path / "devices-filtered.png"), full_page=True)
            assert (tmp_path / "device-tags.png").read_bytes().startswith(b"\x89PNG")
            assert errors == []
        finally:
            browser.close()
