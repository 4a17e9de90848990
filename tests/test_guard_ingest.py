"""Issue 15 against the real server process, the real broker and real TLS clients: one
device's poison payloads are refusals that cost nobody else anything, events belong to
their sender, and what fails after the contract is set aside as a dead letter."""

from __future__ import annotations

import http.cookiejar
import json
import sqlite3
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from firmware import contract
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests import attack
from hil_tests.procs import Broker, wait_for
from hil_tests.server import ServerProcess
from tests.mqtt_helpers import Client

MakeDevice = Callable[[str], DeviceCredentials]


@pytest.fixture(scope="module")
def server(
    broker: Broker, ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path_factory.mktemp("guard-server"), ca.dir, broker.port, grace=5.0,
        client_id="guard-server-1", extra={"ingest": {
            "refusal_log_interval_s": 30,
            "budget": {"kinds": {"heartbeat": {"rate_per_s": 20, "burst": 100}},
                       "flood_after_s": 1.5, "flood_gap_s": 1, "flood_clear_s": 2},
        }},
    )  # fmt: skip
    srv.start_and_wait()
    yield srv
    assert srv.stop(grace=20) == 0, srv.log_text()[-2000:]  # it drains what it holds


def _db(server: ServerProcess) -> sqlite3.Connection:
    return sqlite3.connect(server.config_path.parent / "fleet.db", timeout=30)


def _count(server: ServerProcess, sql: str, *args: object) -> int:
    db = _db(server)
    try:
        return int(db.execute(sql, args).fetchone()[0])
    finally:
        db.close()


def _device(broker: Broker, creds: DeviceCredentials) -> Client:
    return Client(broker.port, creds.root_pem, creds.cert_pem, creds.key_pem, creds.device_id)


def _heartbeat(device: str, seq: int) -> tuple[str, bytes]:
    body = {"seq": seq, "kind": "agent", "interval_s": 30, "uptime_s": float(seq)}
    topic, payload, _q, _r = contract.encode("heartbeat", device, body, time.time())
    return topic, payload


def _poison(device: str) -> list[tuple[str, bytes, str]]:
    """(topic, payload, reason): what a device with a valid certificate can send."""
    hb = contract.topic(device, "heartbeat")
    ev = contract.topic(device, "event")
    head = _heartbeat(device, 1)[1][:-1]
    return [
        (hb, b"[" * 4000 + b"]" * 4000, contract.R_SHAPE),  # the killer
        (hb, b'{"a":' * 1300 + b"1" + b"}" * 1300, contract.R_SHAPE),
        (hb, head + b', "hardware": ' + b"[" * 3000 + b"]" * 3000 + b"}", contract.R_SHAPE),
        (hb, head + b', "mem_free": ' + b"9" * 400 + b"}", contract.R_SHAPE),
        (hb, head + b', "x": 1e999}', contract.R_SHAPE),
        (hb, head + b', "camera": "\\ud800"}', contract.R_SHAPE),
        (hb, head + b', "camera": "a\\u0000b"}', contract.R_SHAPE),
        (hb, head + b', "camera": "\xff\xfe"}', contract.R_JSON),
        (hb, head + b', "x": ' + b"9" * 5000 + b"}", contract.R_JSON),
        (ev, _many_values(device), contract.R_SHAPE),
    ]


def _many_values(device: str) -> bytes:
    body = {"v": 1, "id": device, "ts": 1.0, "seq": 1, "event_id": "e", "type": "t",
            "data": {"x": [0] * 5000}}  # fmt: skip
    return json.dumps(body).encode()


def test_poison_payloads_are_refusals_and_other_devices_keep_being_stored(
    server: ServerProcess, broker: Broker, device_factory: MakeDevice
) -> None:
    honest_id, evil_id = "guard-honest-1", "guard-evil-1"
    honest = _device(broker, device_factory(honest_id))
    evil = _device(broker, device_factory(evil_id))
    poison = _poison(evil_id)
    reasons = {r for _t, _p, r in poison}
    before = {r: server.metric("camfleet_ingest_rejected_total", f'reason="{r}"') for r in reasons}
    rounds = 5
    try:
        seq = 0
        for _round in range(rounds):
            for topic, payload, _reason in poison:
                evil.publish(topic, payload)
                seq += 1
                honest.publish(*_heartbeat(honest_id, seq))
        wait_for(
            lambda: _count(server, "SELECT count(*) FROM heartbeats WHERE device_id = ?",
                           honest_id) == seq,
            20, what=f"all {seq} honest heartbeats stored",
        )  # fmt: skip
        # the ingest still runs after the attack: one more heartbeat is stored
        seq += 1
        honest.publish(*_heartbeat(honest_id, seq))
        wait_for(
            lambda: _count(server, "SELECT count(*) FROM heartbeats WHERE device_id = ?",
                           honest_id) == seq,
            10, what="a heartbeat after the attack",
        )  # fmt: skip
    finally:
        honest.close()
        evil.close()
    want: dict[str, int] = {}
    for _t, _p, reason in poison:
        want[reason] = want.get(reason, 0) + rounds
    for reason, n in want.items():
        got = server.metric("camfleet_ingest_rejected_total", f'reason="{reason}"') - before[reason]
        assert got == n, (reason, got, n)
    assert _count(server, "SELECT count(*) FROM heartbeats WHERE device_id = ?", evil_id) == 0
    assert server.get("/healthz")[0] == 200
    dev = server.device(honest_id)
    assert dev is not None and dev["state"] == "online"
    # 50 refusals, two reasons, one device: logged once each (summaries come per 30 s)
    lines = [ln for ln in server.log_text().splitlines() if f"from {evil_id}" in ln]
    assert 1 <= len(lines) <= 4, lines
    assert server.metric("camfleet_ingest_refusal_log_lines_total") <= 4 + 10


def test_events_belong_to_their_sender(
    server: ServerProcess, broker: Broker, device_factory: MakeDevice
) -> None:
    """A device that sends another's event id first does not make the real one a
    duplicate; a repeat of the same (device, id) still is one."""
    a_id, b_id = "guard-ev-a", "guard-ev-b"
    a = _device(broker, device_factory(a_id))
    b = _device(broker, device_factory(b_id))
    shared = f"{a_id}-1-7"  # the id device a will use, taken by b first

    def event(dev: str, data: dict[str, object]) -> tuple[str, bytes]:
        body = {"seq": 7, "event_id": shared, "type": "door_open", "data": data}
        topic, payload, _q, _r = contract.encode("event", dev, body, time.time())
        return topic, payload

    try:
        b.publish(*event(b_id, {"who": "b"}))
        wait_for(lambda: _count(server, "SELECT count(*) FROM events WHERE device_id = ?",
                                b_id) == 1, 10, what="b's event")  # fmt: skip
        a.publish(*event(a_id, {"who": "a"}))
        a.publish(*event(a_id, {"who": "a-again"}))  # a redelivery: same device, same id
        wait_for(lambda: _count(server, "SELECT count(*) FROM events WHERE device_id = ?",
                                a_id) == 1, 10, what="a's event")  # fmt: skip
        time.sleep(0.5)
    finally:
        a.close()
        b.close()
    status, page = server.get(f"/api/events?device_id={a_id}")
    assert status == 200 and page["total"] == 1
    assert page["items"][0]["data"] == {"who": "a"}
    status, page = server.get(f"/api/events?device_id={b_id}")
    assert status == 200 and page["items"][0]["data"] == {"who": "b"}


def test_dead_letters_are_listed_by_the_api(server: ServerProcess) -> None:
    db = _db(server)
    try:
        db.execute(
            "INSERT INTO dead_letters (device_id, kind, received_at, failed_at, error, payload)"
            " VALUES ('guard-dl-1', 'event', 1.0, 2.0, 'DataError: value too long', '{}')"
        )
        db.commit()
    finally:
        db.close()
    status, page = server.get("/api/dead-letters?device_id=guard-dl-1")
    assert status == 200, page
    assert page["total"] == 1
    assert page["items"][0]["error"] == "DataError: value too long"
    assert server.get("/api/dead-letters", token="")[0] == 401
    _status, spec = server.get("/openapi.json")
    assert "/api/dead-letters" in spec["paths"]


def _stored(server: ServerProcess, device: str) -> int:
    return _count(server, "SELECT count(*) FROM heartbeats WHERE device_id = ?", device)


def _alerts(server: ServerProcess, device: str) -> list[dict[str, object]]:
    _status, page = server.get("/api/alerts?limit=1000")
    return [a for a in page["items"] if a["device_id"] == device and a["rule"] == "flooding"]


def test_flood_is_dropped_alerted_and_quarantine_shuts_it_out(
    server: ServerProcess, broker: Broker, device_factory: MakeDevice
) -> None:
    flood_id, honest_id = "guard-flood-1", "guard-calm-1"
    flooder = _device(broker, device_factory(flood_id))
    honest = _device(broker, device_factory(honest_id))
    before = server.metric("camfleet_ingest_rejected_total", 'reason="over_budget"')
    sent = honest_sent = 0
    try:
        until = time.monotonic() + 3.0  # over budget for longer than flood_after_s (1.5 s)
        while time.monotonic() < until and sent < 30_000:
            sent += 1
            flooder.publish(*_heartbeat(flood_id, sent))
            if sent % 100 == 0:
                honest_sent += 1
                honest.publish(*_heartbeat(honest_id, honest_sent))
            if sent % 200 == 0:  # paced: a quiet machine sent a fixed count in under 1.5 s
                time.sleep(0.05)
        wait_for(lambda: _stored(server, honest_id) == honest_sent, 20, what="honest stored")
        wait_for(lambda: bool(_alerts(server, flood_id)), 10, what="a flooding alert")

        def dropped() -> float:
            return server.metric("camfleet_ingest_rejected_total", 'reason="over_budget"') - before

        # every message accounted for: stored, or dropped over budget (the last may still
        # be on their way when the alert opens)
        wait_for(lambda: _stored(server, flood_id) + dropped() == sent, 15, what="all counted")
        stored = _stored(server, flood_id)
        assert 100 <= stored <= 100 + 20 * 6 and dropped() > 0, (stored, sent)
        assert _alerts(server, flood_id)[0]["state"] == "open"
        assert not _alerts(server, honest_id)
        _status, seen = server.get("/api/quarantine")
        assert flood_id in seen["flooding"] and honest_id not in seen["flooding"]
        assert seen["refused"][flood_id]["over_budget"] == dropped()
        # the operator shuts it out: the broker kicks it; a reader may not
        operator = server.add_user("guard-operator", "operator")
        path = f"/api/devices/{flood_id}/quarantine"
        assert server.post(path, {"reason": "flood"})[0] == 401
        status, body = server.post(path, {"reason": "flood"}, token=operator)
        assert status == 200 and body["disconnected"] is True, body
        # kicked (paho reconnects on its own a second later: count the disconnect)
        wait_for(lambda: flooder.disconnects > 0, 10, what="the flooder kicked")
        _status, seen = server.get("/api/quarantine")
        assert [q["device_id"] for q in seen["quarantined"]] == [flood_id]
        page = _dashboard(server, operator, f"/ui/devices/{flood_id}")
        assert 'data-action="release"' in page and "flood" in page
        # the flood is over once nothing was dropped for flood_clear_s: the alert resolves
        wait_for(lambda: _alerts(server, flood_id)[0]["state"] == "resolved", 15,
                 what="the flooding alert resolved")  # fmt: skip
        # released, it comes back on its next connection
        status, _body = server.post(path, {}, method="DELETE", token=operator)
        assert status == 200
        assert server.post(path, {}, method="DELETE", token=operator)[0] == 404
        flooder.close()
        flooder = _device(broker, device_factory(flood_id))
        flooder.publish(*_heartbeat(flood_id, sent + 1))
        wait_for(lambda: _stored(server, flood_id) == stored + 1, 15, what="back after release")
        assert server.device(honest_id)["state"] == "online"  # type: ignore[index]
    finally:
        flooder.close()
        honest.close()


def _honest_survives(
    server: ServerProcess, broker: Broker, device_factory: MakeDevice, prefix: str,
    duration_s: float,
) -> attack.AttackReport:  # fmt: skip
    def creds(device_id: str) -> attack.Creds:
        c = device_factory(device_id)
        return attack.Creds(device_id, c.root_pem, c.cert_pem, c.key_pem)

    honest = [creds(f"{prefix}-honest-{i}") for i in range(4)]
    evil = creds(f"{prefix}-evil")
    report = attack.run(broker.port, honest, evil, duration_s,
                        take_ids=("guard-server-1", contract.SERVER_IDENTITY))  # fmt: skip
    # identity at the broker (lane people's camfleet_acl plugin): the attacker's foreign
    # subscriptions are refused at SUBACK, it receives nothing of others, and the ids it
    # took kicked nobody: no honest connection lost, the server's never lost
    assert report.suback and all(code >= 0x80 for code in report.suback.values()), report.suback
    assert report.foreign_received == 0
    assert report.honest_disconnects == 0
    assert "ingest lost the broker" not in server.log_text()
    # no honest device ever offline (looked at once: they stopped with the run)
    _status, page = server.get("/api/alerts?limit=1000")
    offline = [a for a in page["items"] if a["rule"] == "offline"
               and a["device_id"].startswith(f"{prefix}-honest")]  # fmt: skip
    assert offline == []
    for h in honest:
        assert server.device(h.device_id)["state"] == "online"  # type: ignore[index]
    # every honest message stored, events as their own
    for h in honest:
        dev = h.device_id
        hb_sql = "SELECT count(DISTINCT seq) FROM heartbeats WHERE device_id = ?"
        ev_sql = (
            "SELECT count(*) FROM events WHERE device_id = ? AND json_extract(data, '$.owner') = ?"
        )
        wait_for(lambda: _count(server, hb_sql, dev) == report.honest_heartbeats[dev]  # noqa: B023
                 and _count(server, ev_sql, dev, dev) == report.honest_events[dev],  # noqa: B023
                 30, what=f"every message of {dev} stored")  # fmt: skip
        assert report.honest_heartbeats[dev] >= duration_s / attack.HB_INTERVAL_S * 0.8
        assert (
            _count(server, "SELECT count(*) FROM events WHERE device_id = ?", dev)
            == (report.honest_events[dev])
        )
    # every attack message stored (under the attacker's own id) or refused with a reason
    dev = evil.device_id

    def accounted() -> tuple[int, dict[str, int]]:
        _s, seen = server.get("/api/quarantine")
        refused: dict[str, int] = seen["refused"].get(dev, {})
        stored = _count(server, "SELECT count(*) FROM heartbeats WHERE device_id = ?", dev)
        stored += _count(server, "SELECT count(*) FROM events WHERE device_id = ?", dev)
        return stored + sum(refused.values()), refused

    until = time.monotonic() + 30
    while (got := accounted())[0] != report.attack_sent and time.monotonic() < until:
        time.sleep(0.2)
    assert got[0] == report.attack_sent, (got, report.attack_kinds)
    refused = got[1]
    for reason in ("bad_shape", "bad_json", "bad_schema", "bad_version", "identity_mismatch",
                   "oversized", "over_budget"):  # fmt: skip
        assert refused.get(reason, 0) > 0, (reason, refused)
    assert refused["over_budget"] > report.attack_kinds["flood"] / 2
    return report


def test_honest_traffic_survives_an_attacker(
    server: ServerProcess, broker: Broker, device_factory: MakeDevice
) -> None:
    _honest_survives(server, broker, device_factory, "atk", duration_s=5.0)


@pytest.mark.hil_long
def test_honest_traffic_survives_an_attacker_for_a_minute(
    server: ServerProcess, broker: Broker, device_factory: MakeDevice
) -> None:
    report = _honest_survives(server, broker, device_factory, "atk-long", duration_s=65.0)
    assert report.attack_sent > 10_000


def _dashboard(server: ServerProcess, token: str, path: str) -> str:
    """A dashboard page as a signed-in person sees it (session cookie from /ui/login)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    login = urllib.request.Request(
        server.base_url + "/ui/login", data=json.dumps({"token": token}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )  # fmt: skip
    opener.open(login, timeout=10).read()
    with opener.open(server.base_url + path, timeout=10) as resp:
        return str(resp.read().decode())
