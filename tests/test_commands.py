"""Remote commands and desired config through the running server and the real broker.

The device side here is a plain MQTT v5 client that answers as the contract says; the
round trips with the real agent and the real MicroPython node are in their own tests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from firmware import contract
from fleet_server.ca import CertificateAuthority, DeviceCredentials
from hil_tests.procs import Broker, wait_for
from hil_tests.server import ServerProcess
from tests.mqtt_helpers import Client

MakeDevice = Callable[[str], DeviceCredentials]


@pytest.fixture(scope="module")
def server(
    broker: Broker, ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("cmd-server"), ca.dir, broker.port)
    srv.start_and_wait()
    yield srv
    srv.stop()


class Responder:
    """A device that answers ping with pong and records the MQTT v5 properties it got."""

    def __init__(self, broker: Broker, creds: DeviceCredentials) -> None:
        self.id = creds.device_id
        self.requests: list[tuple[dict[str, object], object, object]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.id,
                                  protocol=mqtt.MQTTv5)  # fmt: skip
        self.client.tls_set(ca_certs=str(creds.root_pem), certfile=str(creds.cert_pem),
                            keyfile=str(creds.key_pem))  # fmt: skip
        self.client.on_message = self._on_message
        self.client.connect("localhost", broker.port)
        self.client.subscribe(contract.topic(self.id, "cmd_req"), qos=1)
        self.client.subscribe(contract.topic(self.id, "config_desired"), qos=1)
        self.client.loop_start()
        self.beat()

    def beat(self) -> None:
        body = {"seq": 0, "kind": "agent", "interval_s": 30, "uptime_s": 1.0}
        topic, payload, _q, _r = contract.encode("heartbeat", self.id, body, time.time())
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def _on_message(self, client: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        _dev, kind, body = contract.decode(m.topic, m.payload)
        props = m.properties
        if kind == "config_desired":
            ok = "heartbeat_s" in body["config"]
            rep = {"version": body["version"], "ok": ok}
            if not ok:
                rep["error"] = "heartbeat_s missing"
            topic, payload, _q, _r = contract.encode("config_reported", self.id, rep, time.time())
            client.publish(topic, payload, qos=1, retain=True)
            return
        self.requests.append((body, getattr(props, "ResponseTopic", None),
                              getattr(props, "CorrelationData", None)))  # fmt: skip
        res = {"cid": body["cid"], "ok": body["cmd"] == "ping"}
        if body["cmd"] == "ping":
            res["result"] = {"pong": True}
        else:
            res["error"] = f"{body['cmd']} not supported here"
        topic, payload, _q, _r = contract.encode("cmd_res", self.id, res, time.time())
        client.publish(topic, payload, qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_command_round_trip_with_v5_properties(
    server: ServerProcess, broker: Broker, device_factory: MakeDevice
) -> None:
    dev = Responder(broker, device_factory("cmd-a"))
    try:
        wait_for(lambda: server.device("cmd-a") is not None, 10, what="cmd-a known")
        status, done = server.post("/api/devices/cmd-a/commands?wait=true",
                                   {"cmd": "ping", "timeout_s": 5, "by": "op-ana"})  # fmt: skip
        assert status == 202, done
        assert (done["state"], done["result"], done["requested_by"]) == (
            "succeeded", {"pong": True}, "op-ana")  # fmt: skip
        body, response_topic, correlation = dev.requests[-1]
        assert body["cid"] == done["cid"]
        assert response_topic == contract.topic("cmd-a", "cmd_res")
        assert correlation == done["cid"].encode()
        status, failed = server.post("/api/devices/cmd-a/commands?wait=true",
                                     {"cmd": "reboot", "timeout_s": 5})  # fmt: skip
        assert (failed["state"], failed["error"]) == ("failed", "reboot not supported here")
        assert server.get(f"/api/commands/{done['cid']}")[1]["state"] == "succeeded"
        listed = server.get("/api/devices/cmd-a/commands")[1]
        assert {c["cid"] for c in listed} >= {done["cid"], failed["cid"]}
    finally:
        dev.close()


def test_command_to_offline_device_times_out_with_clear_status(
    server: ServerProcess, broker: Broker, device_factory: MakeDevice
) -> None:
    creds = device_factory("cmd-gone")
    dev = Responder(broker, creds)
    wait_for(lambda: (server.device("cmd-gone") or {}).get("state") == "online", 10,
             what="online")  # fmt: skip
    # a clean shutdown, as the agent does it: offline status, then DISCONNECT
    body = {"state": "offline", "kind": "agent", "reason": "shutdown"}
    topic, payload, _q, _r = contract.encode("status", "cmd-gone", body, time.time())
    dev.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    dev.close()
    wait_for(lambda: (server.device("cmd-gone") or {}).get("state") == "offline", 10,
             what="offline")  # fmt: skip
    status, res = server.post("/api/devices/cmd-gone/commands?wait=true",
                              {"cmd": "ping", "timeout_s": 1})  # fmt: skip
    assert status == 202
    assert res["state"] == "timed_out"
    assert res["error"] == "no answer before the deadline: the device is offline"


def test_answers_that_match_nothing_change_nothing(
    server: ServerProcess, broker: Broker, device_factory: MakeDevice
) -> None:
    """An answer for another device's command, or a second answer, is ignored."""
    victim = Responder(broker, device_factory("cmd-b"))
    other_creds = device_factory("cmd-c")
    other = Client(broker.port, other_creds.root_pem, other_creds.cert_pem,
                   other_creds.key_pem, "cmd-c")  # fmt: skip
    try:
        wait_for(lambda: server.device("cmd-b") is not None, 10, what="cmd-b known")
        victim.client.unsubscribe(contract.topic("cmd-b", "cmd_req"))
        time.sleep(0.2)
        status, pending = server.post("/api/devices/cmd-b/commands",
                                      {"cmd": "ping", "timeout_s": 3})  # fmt: skip
        assert status == 202 and pending["state"] == "sent"
        forged = {"cid": pending["cid"], "ok": True, "result": {"pong": "forged"}}
        topic, payload, _q, _r = contract.encode("cmd_res", "cmd-c", forged, time.time())
        other.publish(topic, payload)
        wait_for(lambda: server.get(f"/api/commands/{pending['cid']}")[1]["state"] != "sent",
                 8, what="deadline")  # fmt: skip
        final = server.get(f"/api/commands/{pending['cid']}")[1]
        assert final["state"] == "timed_out" and final["result"] is None
    finally:
        victim.close()
        other.close()


def test_bad_command_requests_are_refused(server: ServerProcess) -> None:
    assert server.post("/api/devices/nobody-here/commands", {"cmd": "ping"})[0] == 404
    assert server.post("/api/devices/cmd-a/commands", {"cmd": "format-disk"})[0] == 422
    assert server.post("/api/devices/cmd-a/commands", {"cmd": "ping", "x": 1})[0] == 422
    assert server.post("/api/devices/cmd-a/commands", {"cmd": "ping", "timeout_s": 0})[0] == 422
    assert server.get("/api/commands/c-doesnotexist")[0] == 404


def test_desired_config_is_versioned_retained_and_reported(
    server: ServerProcess, broker: Broker, ca: CertificateAuthority, device_factory: MakeDevice,
    tmp_path: Path,
) -> None:  # fmt: skip
    dev = Responder(broker, device_factory("cfg-a"))
    try:
        wait_for(lambda: server.device("cfg-a") is not None, 10, what="cfg-a known")
        status, first = server.put("/api/devices/cfg-a/config", {"config": {"heartbeat_s": 15}})
        assert status == 200 and first["version"] == 1
        status, second = server.put("/api/devices/cfg-a/config", {"config": {"fps": 2}})
        assert second["version"] == 2
        wait_for(lambda: server.get("/api/devices/cfg-a/config")[1]["reported_version"] == 2,
                 10, what="report of version 2")  # fmt: skip
        cfg = server.get("/api/devices/cfg-a/config")[1]
        assert (cfg["reported_ok"], cfg["reported_error"]) == (False, "heartbeat_s missing")
        # retained: a device that connects later still gets the latest desired config
        late = Client(broker.port, ca.root_cert_path, ca.server_cert_path, ca.server_key_path)
        late.subscribe(contract.topic("cfg-a", "config_desired"))
        got = json.loads(late.wait_for(contract.topic("cfg-a", "config_desired"))[0])
        late.close()
        assert (got["version"], got["config"]) == (2, {"fps": 2})
    finally:
        dev.close()
