"""The fleet server process ingests through the real broker and survives bad input."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from firmware import contract
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.procs import Broker, wait_for
from hil_tests.server import ServerProcess
from tests.mqtt_helpers import Client

MakeDevice = Callable[[str], DeviceCredentials]


@pytest.fixture(scope="module")
def server(
    broker: Broker, ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("server"), ca.dir, broker.port, grace=3.0)
    srv.start_and_wait()
    yield srv
    assert srv.stop() == 0, srv.log_text()[-2000:]


def _db_rows(server: ServerProcess) -> tuple[int, int, list[tuple[str, str]]]:
    db = sqlite3.connect(server.config_path.parent / "fleet.db")
    try:
        hb = db.execute("SELECT count(*) FROM heartbeats").fetchone()[0]
        devs = db.execute("SELECT id, state FROM devices ORDER BY id").fetchall()
        return hb, len(devs), devs
    finally:
        db.close()


def _heartbeat(device: str, seq: int, **extra: object) -> tuple[str, bytes]:
    body = {"seq": seq, "kind": "agent", "interval_s": 30, "uptime_s": 5.0, **extra}
    topic, payload, _q, _r = contract.encode("heartbeat", device, body, time.time())
    return topic, payload


def _device(broker: Broker, creds: DeviceCredentials) -> Client:
    return Client(broker.port, creds.root_pem, creds.cert_pem, creds.key_pem, creds.device_id)


def test_heartbeat_reaches_the_api(
    server: ServerProcess, broker: Broker, device_factory: MakeDevice
) -> None:
    dev = _device(broker, device_factory("ing-a"))
    try:
        dev.publish(*_heartbeat("ing-a", 1, cpu_pct=12.5, versions={"agent": "9.9"}))
        wait_for(lambda: server.device("ing-a") is not None, 10, what="ing-a in the API")
    finally:
        dev.close()
    got = server.device("ing-a")
    assert got is not None
    assert got["state"] == "online"
    assert got["versions"] == {"agent": "9.9"}
    assert got["last_heartbeat"]["cpu_pct"] == 12.5
    status, page = server.get("/api/devices?state=online")
    assert status == 200
    assert "ing-a" in [d["id"] for d in page["items"]]


def test_reads_need_an_account(server: ServerProcess) -> None:
    """Every role may read the fleet; nobody without a valid token may."""
    for path in ("/api/devices", "/api/alerts", "/api/events", "/api/counts"):
        assert server.get(path, token="")[0] == 401, path
        assert server.get(path, token="cf_api_forged")[0] == 401, path
        assert server.get(path)[0] == 200, path  # the rig's viewer
    tech = server.add_user("tech-read", "technician")
    assert server.get("/api/devices", token=tech)[0] == 200
    assert server.get("/healthz", token="")[0] == 200  # liveness and metrics stay open
    assert server.get("/metrics", token="")[0] == 200


def test_api_refuses_bad_queries(server: ServerProcess) -> None:
    assert server.get("/api/devices/no-such-device")[0] == 404
    assert server.get("/api/devices/BAD_ID")[0] == 422
    assert server.get("/api/devices?limit=0")[0] == 422
    assert server.get("/api/devices?state=sideways")[0] == 422


def test_bad_input_is_counted_dropped_and_changes_nothing(
    server: ServerProcess, broker: Broker, device_factory: MakeDevice
) -> None:
    creds = device_factory("ing-bad")
    dev = _device(broker, creds)
    sentinel = _device(broker, device_factory("ing-sentinel"))
    good_topic, good = _heartbeat("ing-bad", 1)
    body = json.loads(good)
    cases: dict[str, list[bytes]] = {
        contract.R_JSON: [b"{not json", b"\xff\xfe", b""],
        contract.R_SCHEMA: [
            json.dumps({**body, "seq": "one"}).encode(),
            json.dumps({**body, "cpu_pct": 250}).encode(),
            json.dumps({**body, "kind": "toaster"}).encode(),
            json.dumps([1, 2, 3]).encode(),
            json.dumps({k: v for k, v in body.items() if k != "seq"}).encode(),
        ],
        contract.R_SIZE: [json.dumps({**body, "pad": "x" * 9000}).encode()],
        contract.R_VERSION: [json.dumps({**body, "v": 2}).encode()],
        contract.R_IDENTITY: [json.dumps({**body, "id": "ing-sentinel"}).encode()],
        contract.R_TOPIC: [],
    }
    before = {r: server.metric("camfleet_ingest_rejected_total", f'reason="{r}"') for r in cases}
    rows_before = _db_rows(server)
    try:
        for payloads in cases.values():
            for p in payloads:
                dev.publish(good_topic, p)
        # beyond the broker's packet limit: the broker cuts that client off; nothing arrives
        dev.client.publish(good_topic, b"x" * (contract.MAX_MESSAGE + 4096), qos=0)
        # a valid message after all of them proves the server read past every bad one
        sentinel.publish(*_heartbeat("ing-sentinel", 1))
        wait_for(lambda: server.device("ing-sentinel") is not None, 10, what="sentinel")
        wait_for(
            lambda: all(
                server.metric("camfleet_ingest_rejected_total", f'reason="{r}"') - before[r]
                >= len(p)
                for r, p in cases.items()
            ),
            10,
            what="rejections counted",
        )
    finally:
        dev.close()
        sentinel.close()
    for reason, payloads in cases.items():
        got = server.metric("camfleet_ingest_rejected_total", f'reason="{reason}"') - before[reason]
        assert got == len(payloads), reason
    assert server.alive()
    hb_after, devs_after, rows = _db_rows(server)
    # exactly one new heartbeat and one new device: the sentinel; nothing from ing-bad
    assert hb_after == rows_before[0] + 1
    assert devs_after == rows_before[1] + 1
    assert "ing-bad" not in [r[0] for r in rows]
    assert server.device("ing-bad") is None


def test_will_marks_device_offline(
    server: ServerProcess, broker: Broker, ca: CertificateAuthority, device_factory: MakeDevice
) -> None:
    creds = device_factory("ing-will")
    ts = time.time()
    will_topic, will, _q, _r = contract.encode(
        "status", "ing-will", {"state": "offline", "kind": "agent"}, ts
    )
    online_topic, online, _q, _r = contract.encode(
        "status", "ing-will", {"state": "online", "kind": "agent"}, ts
    )
    raw = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ing-will", protocol=mqtt.MQTTv5)
    raw.tls_set(
        ca_certs=str(creds.root_pem), certfile=str(creds.cert_pem), keyfile=str(creds.key_pem)
    )
    raw.will_set(will_topic, will, qos=1, retain=True)
    raw.connect("localhost", broker.port, keepalive=5)
    raw.loop_start()
    raw.publish(online_topic, online, qos=1, retain=True).wait_for_publish(5)
    wait_for(lambda: (server.device("ing-will") or {}).get("state") == "online", 10, what="online")
    # drop the TCP connection without DISCONNECT: the broker sends the will
    raw.loop_stop()
    raw.socket().close()  # type: ignore[union-attr]
    t0 = time.monotonic()
    wait_for(
        lambda: (server.device("ing-will") or {}).get("state") == "offline",
        10,
        what="offline after will",
    )
    assert time.monotonic() - t0 < 7.5  # within 1.5 x keepalive
    got = server.device("ing-will")
    assert got is not None
    assert got["state_reason"] == "connection_lost"


def test_metrics_endpoint_is_prometheus_text(server: ServerProcess) -> None:
    status, text = server.get("/metrics")
    assert status == 200
    assert "camfleet_ingest_received_total" in text
    assert 'camfleet_devices{state="online"}' in text


def test_openapi_served_and_no_cdn_pages(server: ServerProcess) -> None:
    status, spec = server.get("/openapi.json")
    assert status == 200
    assert {"/api/devices", "/api/devices/{device_id}"} <= set(spec["paths"])
    assert server.get("/docs")[0] == 404  # Swagger UI would pull assets from a CDN


def test_health_history_of_a_device(
    server: ServerProcess, broker: Broker, device_factory: MakeDevice
) -> None:
    dev = _device(broker, device_factory("ing-hist"))
    try:
        for seq in range(3):
            dev.publish(*_heartbeat("ing-hist", seq, cpu_pct=10.0 + seq, temp_c=40.0))
        wait_for(lambda: (server.device("ing-hist") or {}).get("last_seq") == 2, 10,
                 what="three heartbeats")  # fmt: skip
    finally:
        dev.close()
    status, hist = server.get("/api/devices/ing-hist/health")
    assert status == 200
    assert [p["seq"] for p in hist["raw"]] == [0, 1, 2]
    assert [p["values"]["cpu_pct"] for p in hist["raw"]] == [10.0, 11.0, 12.0]
    assert hist["hourly"] == []  # nothing older than a day yet
    assert server.get("/api/devices/nobody-here/health")[0] == 404
    assert server.get("/api/devices/ing-hist/health", token="")[0] == 401
