"""Campaigns end to end: the real fleet server process, a real TLS Mosquitto, simulated
devices (hil_tests.update_sim: own certificates, heartbeats, they install what
update/desired asks and report update_state), the REST API as operator and viewer, and an
observer on the broker that sees every update_desired message and the alerts topic.

- a canary that fails halts the campaign; no device outside the canary changes;
- a happy path where the waves proceed, then a rollback campaign takes everyone back;
- the API refuses bad input with 4xx, viewers cannot change anything, pause/resume/cancel.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from firmware import contract
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.rollouts import plan
from hil_tests.procs import Broker, Process, wait_for
from hil_tests.server import ServerProcess
from tests.mqtt_helpers import Client, server_creds

N = 12
FLEET = [f"upd-{i:02d}" for i in range(N)]


@dataclass
class Rig:
    server: ServerProcess
    broker: Broker
    operator: str
    viewer: str
    observer: Client
    creds: Path
    ca: CertificateAuthority
    work: Path

    def sim(self, name: str, fail: list[str]) -> tuple[Process, Path]:
        stats = self.work / f"{name}.json"
        proc = Process(
            f"sim-{name}",
            [sys.executable, "-m", "hil_tests.update_sim", "--creds", str(self.creds),
             "--root", str(self.ca.root_cert_path), "--port", str(self.broker.port),
             "--interval", "1", "--rate", "50", "--step", "0.05", "--release", "0.1.0",
             "--fail-ids", ",".join(fail), "--duration", "120", "--stats", str(stats)],
            self.work / f"sim-{name}.log",
        ).start()  # fmt: skip
        return proc, stats

    def desired(self) -> dict[str, list[dict[str, Any]]]:
        """Every non-empty update_desired the broker delivered, per device."""
        out: dict[str, list[dict[str, Any]]] = {}
        with self.observer._lock:
            msgs = [(m.topic, bytes(m.payload)) for m in self.observer.messages]
        for topic, payload in msgs:
            if topic.endswith("/update/desired") and payload:
                out.setdefault(contract.parse_topic(topic)[0], []).append(json.loads(payload))
        return out

    def alerts(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.observer.received(contract.ALERTS_TOPIC)]

    def create(self, body: dict[str, Any], token: str | None = None) -> tuple[int, Any]:
        return self.server.post("/api/rollouts", body, token=self.operator if token is None
                                else token)  # fmt: skip


def _stats(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {}


@pytest.fixture(scope="module")
def rig(ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("rollouts")
    creds = work / "creds"
    for dev in FLEET:
        ca.issue_device(dev, creds / dev, days=2)
    broker = Broker(ca, work / "broker").start()  # its own: retained messages stay here
    server = ServerProcess(work / "server", ca.dir, broker.port, grace=3.0,
                           extra={"rollouts": {"tick_s": 0.2}})  # fmt: skip
    operator = server.add_user("olga", "operator")
    viewer = server.add_user("vic", "viewer")
    server.start_and_wait()
    observer = Client(broker.port, ca.root_cert_path, *server_creds(ca),
                      "rollout-observer")  # fmt: skip
    observer.subscribe(f"{contract.TOPIC_ROOT}/+/update/desired")
    observer.subscribe(contract.ALERTS_TOPIC)
    try:
        yield Rig(server, broker, operator, viewer, observer, creds, ca, work)
    finally:
        observer.close()
        server.stop()
        broker.stop()


def _campaign(name: str, **kw: Any) -> dict[str, Any]:
    body = {"name": name, "artifact": "agent", "release": "0.2.0",
            "target": "agent/camfleet-agent-0.2.0.tar.gz",
            "waves": [{"count": 2}, {"percent": 50}, {"percent": 100}],
            "success_threshold": 1.0, "failure_threshold": 0.0, "soak_s": 1.0,
            "rate_per_min": 1000, "device_deadline_s": 60}  # fmt: skip
    body.update(kw)
    return body


def _get(rig: Rig, cid: str) -> dict[str, Any]:
    status, body = rig.server.get(f"/api/rollouts/{cid}")
    assert status == 200, body
    result: dict[str, Any] = body
    return result


def _versions(rig: Rig) -> dict[str, str]:
    _s, page = rig.server.get("/api/devices?limit=100")
    return {d["id"]: d["versions"].get("agent") for d in page["items"] if d["id"] in FLEET}


def test_a_failing_canary_halts_and_nobody_else_changes(rig: Rig) -> None:
    body = _campaign("canary-fails")
    status, dry = rig.create({**body, "dry_run": True})
    assert status == 200 and dry["campaign"] is None  # nothing stored: the devices are unknown
    assert dry["plan"]["total"] == 0
    # the order a campaign reaches devices is a stable shuffle of what it installs and its name
    canary = plan.plan_order("agent/0.2.0/canary-fails", FLEET)[:2]
    sim, stats = rig.sim("halt", fail=canary[:1])  # one canary device fails its install
    try:
        wait_for(lambda: _stats(stats).get("connected") == N, 30, what="simulator connected")
        wait_for(lambda: len(_versions(rig)) == N, 30, what="every simulated device known")
        status, dry = rig.create({**body, "dry_run": True})
        assert status == 200 and dry["plan"]["wave_sizes"] == [2, 4, 6]
        assert dry["plan"]["devices"][:2] == canary
        status, made = rig.create(body)
        assert status == 201, made
        cid = made["campaign"]["id"]
        assert made["plan"]["devices"][:2] == canary
        wait_for(lambda: _get(rig, cid)["state"] == "halted", 30, what="campaign halted")
        camp = _get(rig, cid)
        assert camp["reason"].startswith("wave 1: 1 of 2 failed")
        assert camp["counts"]["skipped"] == N - 2 and camp["counts"]["failed"] == 1
        wait_for(lambda: _get(rig, cid)["counts"]["committed"] == 1, 15,
                 what="the other canary device done")  # fmt: skip
        time.sleep(1.0)  # several engine ticks after the halt: still nobody else asked
        asked = rig.desired()
        assert set(asked) == set(canary), asked
        assert set(_stats(stats)["desired"]) == set(canary)
        versions = _versions(rig)
        assert all(versions[d] == "0.1.0" for d in FLEET if d not in canary), versions
        _s, page = rig.server.get(f"/api/rollouts/{cid}/devices?state=failed")
        assert [d["device_id"] for d in page["devices"]] == canary[:1]
        assert page["devices"][0]["error"] == "bad_hash: injected failure"
        wait_for(
            lambda: any(a.get("campaign") == cid and a["event"] == "halted" for a in rig.alerts()),
            10,
            what="halt on the alerts topic",
        )
        # the operator ends it: nothing is left claimed, the canary's desired is cleared
        status, done = rig.server.post(f"/api/rollouts/{cid}/cancel", {}, token=rig.operator)
        assert status == 200 and done["state"] == "cancelled"
        wait_for(lambda: _get(rig, cid)["closed_at"] is not None, 10, what="campaign closed")
        for dev in canary:
            topic = contract.topic(dev, "update_desired")
            wait_for(lambda t=topic: rig.observer.received(t)[-1:] == [b""], 10,  # type: ignore[misc]
                     what=f"desired of {dev} cleared")  # fmt: skip
    finally:
        sim.stop()


def test_happy_path_waves_proceed_then_a_rollback_campaign(rig: Rig) -> None:
    sim, stats = rig.sim("happy", fail=[])
    try:
        wait_for(lambda: _stats(stats).get("connected") == N, 30, what="simulator connected")
        wait_for(lambda: len(_versions(rig)) == N, 30, what="every device known")
        status, made = rig.create(_campaign("all-the-way", soak_s=0.5))
        assert status == 201, made
        cid = made["campaign"]["id"]
        wait_for(lambda: _get(rig, cid)["state"] == "finished", 60, what="campaign finished")
        camp = _get(rig, cid)
        assert [w["counts"]["healthy"] for w in camp["waves"]] == [2, 4, 6]
        assert camp["counts"]["committed"] == N and camp["reason"] == "every wave passed"
        wait_for(lambda: set(_versions(rig).values()) == {"0.2.0"}, 15,
                 what="every heartbeat says 0.2.0")  # fmt: skip
        wait_for(lambda: _get(rig, cid)["closed_at"] is not None, 10, what="desired cleared")
        # the waves went in order: nobody of a later wave was asked before the earlier passed
        status, page = rig.server.get(f"/api/rollouts/{cid}/devices?limit=100")
        asked = {d["device_id"]: (d["wave"], d["asked_at"]) for d in page["devices"]}
        for wave in (2, 3):
            first_of = min(a for w, a in asked.values() if w == wave)
            assert all(a < first_of for w, a in asked.values() if w == wave - 1)
        _s, upd = rig.server.get(f"/api/devices/{FLEET[0]}/update")
        assert upd["state"] == "committed" and upd["healthy"] is True

        status, back = rig.server.post(f"/api/rollouts/{cid}/rollback", {}, token=rig.operator)
        assert status == 201, back
        (rb,) = back["campaigns"]
        assert rb["release"] == "0.1.0" and rb["allow_downgrade"] and rb["rollback_of"] == cid
        wait_for(lambda: _get(rig, rb["id"])["state"] == "finished", 60,
                 what="rollback finished")  # fmt: skip
        wait_for(lambda: set(_versions(rig).values()) == {"0.1.0"}, 15,
                 what="every heartbeat says 0.1.0 again")  # fmt: skip
        assert all(d[-1]["release"] == "0.1.0" and d[-1].get("allow_downgrade")
                   for d in rig.desired().values())  # fmt: skip
    finally:
        sim.stop()


def test_api_refuses_bad_input_and_checks_roles(rig: Rig) -> None:
    wait_for(lambda: len(_versions(rig)) == N, 30, what="every device known")
    bad = [
        _campaign("x", windows=["25:00-01:00"]),  # not a time
        _campaign("x", windows=["03:00-03:00"]),  # empty
        _campaign("x", failure_threshold=1.5),
        _campaign("x", success_threshold=-0.1),
        _campaign("x", waves=[]),
        _campaign("x", waves=[{"count": 2, "percent": 10}]),
        _campaign("x", artifact="kernel"),
        _campaign("x", release="../etc"),
        _campaign("x", filter={"tags": ["nobody-has-this"]}),
        _campaign("x", filter={"device_ids": ["upd-99"]}),
        _campaign("x", rate_per_min=0),
    ]
    for body in bad:
        status, answer = rig.create(body)
        assert status == 422, (body, answer)
    status, _ = rig.create(_campaign("viewer-try"), token=rig.viewer)
    assert status == 403
    status, _ = rig.create(_campaign("anon"), token="")
    assert status == 401
    status, made = rig.create(_campaign("paused-one", filter={"device_ids": FLEET[:4]}))
    assert status == 201
    cid = made["campaign"]["id"]
    for action, want in (("pause", 200), ("pause", 409), ("resume", 200), ("cancel", 200),
                         ("resume", 409), ("cancel", 409)):  # fmt: skip
        status, answer = rig.server.post(f"/api/rollouts/{cid}/{action}", {}, token=rig.operator)
        assert status == want, (action, answer)
    status, _ = rig.server.post(f"/api/rollouts/{cid}/pause", {}, token=rig.viewer)
    assert status == 403
    status, _ = rig.server.post("/api/rollouts/r-000000000000/pause", {}, token=rig.operator)
    assert status == 404
    status, made = rig.create(_campaign("holds", filter={"device_ids": FLEET[4:8]}))
    assert status == 201
    status, clash = rig.create(_campaign("overlaps", filter={"device_ids": FLEET[6:10]}))
    assert status == 409 and made["campaign"]["id"] in clash["detail"]
    rig.server.post(f"/api/rollouts/{made['campaign']['id']}/cancel", {}, token=rig.operator)
    status, page = rig.server.get("/api/rollouts?state=cancelled")
    assert status == 200 and page["total"] >= 2
    status, _ = rig.server.get("/api/rollouts/r-nothing-here")
    assert status == 404
    status, _ = rig.server.put("/api/sites/no-such-site/timezone", {"timezone": "UTC"})
    assert status == 401  # the rig's put carries no token
    status, _ = rig.server.post("/api/sites/no-such-site/timezone", {"timezone": "UTC"},
                                method="PUT", token=rig.operator)  # fmt: skip
    assert status == 404


def _sign_in(page: Any, base: str, token: str) -> None:
    page.goto(base + "/ui/login")
    page.fill("#login-token", token)
    page.click("#login")
    page.wait_for_url("**/ui/")


def _closed_window() -> str:
    """A one-hour maintenance window that is closed now in the default zone (Rome)."""
    hour = (dt.datetime.now(ZoneInfo("Europe/Rome")).hour + 12) % 24
    return f"{hour:02d}:00-{(hour + 1) % 24:02d}:00"


def test_dashboard_campaign_pages_in_chromium(rig: Rig, browser: Any, tmp_path: Path) -> None:
    sim, _stats_path = rig.sim("dash", fail=[])
    try:
        wait_for(lambda: len(_versions(rig)) == N, 30, what="every device known")
        status, made = rig.create(_campaign("night-only", windows=[_closed_window()],
                                            filter={"device_ids": FLEET[:6]}))  # fmt: skip
        assert status == 201, made
        cid = made["campaign"]["id"]
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        base = rig.server.base_url
        _sign_in(page, base, rig.viewer)
        page.goto(base + "/ui/rollouts")
        assert "night-only" in page.inner_text(f"#campaign-{cid}")
        page.click(f"#campaign-{cid} a")
        page.wait_for_url(f"**/ui/rollouts/{cid}")
        assert "running" in page.inner_text("#campaign-state")
        assert page.locator("#waves tr").count() == 1 + 3 + 1  # header, 3 waves, total
        assert page.locator("#rollout-devices tr").count() == 1 + 6
        assert page.locator("#rollout-pause").count() == 0  # a viewer sees no buttons
        page.screenshot(path=str(tmp_path / "campaign-viewer.png"), full_page=True)

        page.click("#logout")
        page.wait_for_url("**/ui/login")
        _sign_in(page, base, rig.operator)
        page.goto(f"{base}/ui/rollouts/{cid}")
        for button, state in (("pause", "paused"), ("resume", "running"), ("cancel", "cancelled")):
            page.click(f"#rollout-{button}")
            # (no wait_for_function: the page's CSP refuses the eval it needs)
            page.wait_for_selector(f"#campaign-state:has-text('{state}')")
            assert _get(rig, cid)["state"] == state  # the click changed the server
        assert page.locator("#rollout-devices .rollout-skipped").count() == 6
        page.screenshot(path=str(tmp_path / "campaign-operator.png"), full_page=True)

        page.goto(f"{base}/ui/devices/{FLEET[0]}")  # its latest campaign and state in it
        assert "night-only" in page.inner_text("#update-state")
        assert "skipped" in page.inner_text("#update-state")
        page.screenshot(path=str(tmp_path / "device-update.png"), full_page=True)
        for name in ("campaign-viewer", "campaign-operator", "device-update"):
            data = (tmp_path / f"{name}.png").read_bytes()
            assert data.startswith(b"\x89PNG") and len(data) > 5000
        assert errors == []
    finally:
        sim.stop()
