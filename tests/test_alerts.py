"""Health rules and the alert lifecycle: pure rules, the book on a real database, and the
running server delivering alert changes on MQTT and to a webhook."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from firmware import contract
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.health import rules
from fleet_server.health.alerts import AlertBook, AlertError
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from fleet_server.ingest.registry import Accepted, Registry
from fleet_server.migrate import upgrade
from hil_tests.identity import IdentityServer
from hil_tests.procs import Broker, free_port, wait_for
from tests.mqtt_helpers import Client, server_creds

T = rules.RuleThresholds()


def test_rules_name_what_is_wrong_and_ignore_what_is_not_reported() -> None:
    body = {"ts": 1000.0, "temp_c": 85.5, "disk_used_pct": 50, "camera": "frozen"}
    found = rules.broken_rules(rules.evaluate(body, 1000.0, T))
    assert set(found) == {"temperature", "camera"}
    assert found["temperature"].severity == rules.CRITICAL
    assert "85.5 > 80" in found["temperature"].message
    assert rules.evaluate({"ts": 1000.0}, 1000.0, T) == []  # nothing reported, nothing wrong
    drift = rules.broken_rules(rules.evaluate({"ts": 1000.0}, 1100.0, T))
    assert drift["clock"].value == -100.0
    assert set(rules.broken_rules(rules.evaluate({"ts": 1.0, "fps": 0.2}, 1.0, T))) == {"fps"}


def test_clock_rule_measures_drift_from_the_fleets_delivery_lag() -> None:
    """A server 53 s behind (a backlog) sees every heartbeat 53 s late: that is no device's
    clock drift. One device whose clock is an hour behind is still found, and with too few
    devices seen the lag is not trusted (a lone skewed device is not its own baseline)."""
    lag = rules.DeliveryLag(window=50, min_devices=5)
    assert lag.seconds() == 0.0
    lag.add("cam-1", 100.0)
    assert lag.seconds() == 0.0  # one device: not a fleet-wide figure
    for i in range(40):
        lag.add(f"cam-{i % 10}", 53.0 + (i % 3) * 0.1)
    assert 53.0 <= lag.seconds() <= 53.2
    late = lag.seconds()
    assert rules.evaluate({"ts": 1000.0}, 1053.1, T, late) == []
    assert "clock" in rules.broken_rules(rules.evaluate({"ts": 1000.0}, 1053.1, T))  # unaided
    skewed = rules.broken_rules(rules.evaluate({"ts": 1000.0 - 3600}, 1053.1, T, late))
    assert -3601 < float(skewed["clock"].value) < -3599
    ahead = rules.DeliveryLag(window=20, min_devices=2)
    for i in range(20):
        ahead.add(f"cam-{i}", -5.0)  # clocks a little ahead of the server's
    assert ahead.seconds() == 0.0  # never a negative lag


def test_flap_suppression_steps() -> None:
    s = rules.step(True, 0, 5, active=False, t=T)
    assert (s.bad_count, s.good_count, s.open) == (1, 0, False)  # one bad is not enough
    s = rules.step(True, s.bad_count, s.good_count, active=False, t=T)
    assert s.open
    s = rules.step(False, 2, 0, active=True, t=T)
    assert not s.resolve  # one good is not enough
    assert rules.step(False, 0, 1, active=True, t=T).resolve


@pytest.fixture
def registry(database_url: str) -> Registry:
    upgrade(database_url)
    return Registry(make_sessionmaker(make_engine(database_url)), AlertBook(T))


def _hb(device: str, seq: int, at: float, **fields: Any) -> Accepted:
    body = {"seq": seq, "kind": "agent", "interval_s": 5, "uptime_s": float(seq), **fields}
    topic, payload, _q, _r = contract.encode("heartbeat", device, body, at)
    return Accepted(*contract.decode(topic, payload), at)


def test_alert_opens_is_acknowledged_and_resolves(registry: Registry) -> None:
    changes = registry.apply([_hb("al-1", 0, 100.0, temp_c=90.0)]).alerts
    assert changes == []  # a single hot heartbeat could be a flap
    opened = registry.apply([_hb("al-1", 1, 105.0, temp_c=91.0)]).alerts
    assert [(c.rule, c.state) for c in opened] == [("temperature", "open")]
    assert registry.apply([_hb("al-1", 2, 110.0, temp_c=92.0)]).alerts == []  # still one alert
    with registry.sessions.begin() as db:
        ack = AlertBook.acknowledge(db, opened[0].alert_id, "operator-ana", 111.0)
    assert ack.state == "acknowledged"
    with pytest.raises(AlertError), registry.sessions.begin() as db:
        AlertBook.acknowledge(db, opened[0].alert_id, "again", 112.0)
    assert registry.apply([_hb("al-1", 3, 115.0, temp_c=50.0)]).alerts == []
    resolved = registry.apply([_hb("al-1", 4, 120.0, temp_c=50.0)]).alerts
    assert [(c.alert_id, c.state) for c in resolved] == [(opened[0].alert_id, "resolved")]


def test_offline_opens_at_once_and_online_resolves(registry: Registry) -> None:
    registry.apply([_hb("al-2", 0, 100.0)])
    _topic, payload, _q, _r = contract.encode(
        "status", "al-2", {"state": "offline", "kind": "agent"}, 101.0
    )
    stats = registry.apply([Accepted("al-2", "status", json.loads(payload), 101.0)])
    assert [(c.rule, c.state) for c in stats.alerts] == [("offline", "open")]
    back = registry.apply([_hb("al-2", 1, 130.0)]).alerts
    assert [(c.rule, c.state) for c in back] == [("offline", "resolved")]
    registry.apply([_hb("al-2", 2, 135.0, interval_s=1)])
    gone, deadline_changes = registry.mark_overdue(200.0, grace=3.0)
    assert gone == ["al-2"]
    assert [(c.rule, c.state) for c in deadline_changes] == [("offline", "open")]


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        _Hook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    _Hook.received = []
    srv = ThreadingHTTPServer(("127.0.0.1", free_port()), _Hook)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hook", _Hook.received
    srv.shutdown()


def test_server_delivers_alert_changes_on_mqtt_and_webhook(
    broker: Broker, ca: CertificateAuthority, device_factory: Callable[[str], DeviceCredentials],
    webhook: tuple[str, list[dict[str, Any]]], tmp_path: Path,
) -> None:  # fmt: skip
    url, hooked = webhook
    server = IdentityServer(tmp_path / "srv", ca, broker, extra={"alerts": {"webhook_url": url}})
    watcher = Client(broker.port, ca.root_cert_path, *server_creds(ca))
    watcher.subscribe(contract.ALERTS_TOPIC)
    creds = device_factory("al-hot")
    dev = Client(broker.port, creds.root_pem, creds.cert_pem, creds.key_pem, "al-hot")
    try:
        server.start_all()
        for seq in range(3):
            body = {"seq": seq, "kind": "agent", "interval_s": 30, "uptime_s": 1.0 * seq,
                    "temp_c": 95.0}  # fmt: skip
            dev.publish(*contract.encode("heartbeat", "al-hot", body, time.time())[:2])

        # (retained statuses of other tests' devices on the shared broker raise their own
        # offline alerts in this fresh server: look at al-hot's only)
        def mine() -> list[dict[str, Any]]:
            return [m for m in (json.loads(p) for p in watcher.received(contract.ALERTS_TOPIC))
                    if m["device_id"] == "al-hot"]  # fmt: skip

        def hooked_mine() -> list[dict[str, Any]]:
            return [m for m in hooked if m["device_id"] == "al-hot"]

        wait_for(lambda: bool(mine()), 10, what="al-hot's alert on MQTT")
        got = mine()[0]
        assert (got["device_id"], got["rule"], got["state"]) == ("al-hot", "temperature", "open")
        wait_for(lambda: len(hooked_mine()) >= 1, 10, what="webhook call")
        assert hooked_mine()[0] == got
        status, page = server.get("/api/alerts?active=true&device_id=al-hot")
        assert status == 200 and page["total"] == 1
        alert_id = page["items"][0]["id"]
        ack = f"/api/alerts/{alert_id}/acknowledge"
        assert server.post(ack, {})[0] == 401  # no token
        viewer = server.add_user("wall-screen", "viewer")
        assert server.call("POST", ack, {}, token=viewer)[0] == 403
        operator = server.add_user("op-ana", "operator")
        status, acked = server.call("POST", ack, {"note": "crew sent"}, token=operator)
        assert status == 200 and acked["state"] == "acknowledged"
        assert acked["acknowledged_by"] == "op-ana"
        assert server.call("POST", ack, {})[0] == 409
        assert server.call("POST", "/api/alerts/999999/acknowledge", {})[0] == 404
        assert server.call("POST", ack, {"who": "x"})[0] == 422
        _s, log = server.call("GET", "/api/audit?action=alert.acknowledge")
        assert [(e["actor"], e["target"]) for e in log] == [("op-ana", str(alert_id))]
        wait_for(lambda: len(hooked_mine()) >= 2, 10, what="webhook for the acknowledgement")
        assert hooked_mine()[1]["state"] == "acknowledged"
        assert server.metric("camfleet_webhook_total", 'result="delivered"') >= 2
    finally:
        dev.close()
        watcher.close()
        server.stop()
