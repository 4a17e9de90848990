"""Remote commands and desired config through the running server and the real broker.

The device side here is a plain MQTT v5 client that answers as the contract says; the
round trips with the real agent and the real MicroPython node are in their own tests.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from firmware import contract
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.agent import agent_process
from hil_tests.identity import IdentityServer
from hil_tests.images import write_test_images
from hil_tests.node import node_process
from hil_tests.procs import Broker, wait_for
from tests.mqtt_helpers import Client, server_creds

MakeDevice = Callable[[str], DeviceCredentials]


@pytest.fixture(scope="module")
def server(
    broker: Broker, ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IdentityServer]:
    srv = IdentityServer(tmp_path_factory.mktemp("cmd-server"), ca, broker)
    srv.start_all()
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
    server: IdentityServer, broker: Broker, device_factory: MakeDevice
) -> None:
    dev = Responder(broker, device_factory("cmd-a"))
    try:
        wait_for(lambda: server.device("cmd-a") is not None, 10, what="cmd-a known")
        status, done = server.call("POST", "/api/devices/cmd-a/commands?wait=true",
                                   {"cmd": "ping", "timeout_s": 5})  # fmt: skip
        assert status == 202, done
        assert (done["state"], done["result"], done["requested_by"]) == (
            "succeeded", {"pong": True}, "admin")  # fmt: skip
        body, response_topic, correlation = dev.requests[-1]
        assert body["cid"] == done["cid"]
        assert response_topic == contract.topic("cmd-a", "cmd_res")
        assert correlation == done["cid"].encode()
        status, failed = server.call("POST", "/api/devices/cmd-a/commands?wait=true",
                                     {"cmd": "reboot", "timeout_s": 5})  # fmt: skip
        assert (failed["state"], failed["error"]) == ("failed", "reboot not supported here")
        assert server.get(f"/api/commands/{done['cid']}")[1]["state"] == "succeeded"
        listed = server.get("/api/devices/cmd-a/commands")[1]
        assert {c["cid"] for c in listed} >= {done["cid"], failed["cid"]}
    finally:
        dev.close()


def test_command_to_offline_device_times_out_with_clear_status(
    server: IdentityServer, broker: Broker, device_factory: MakeDevice
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
    status, res = server.call("POST", "/api/devices/cmd-gone/commands?wait=true",
                              {"cmd": "ping", "timeout_s": 1})  # fmt: skip
    assert status == 202
    assert res["state"] == "timed_out"
    assert res["error"] == "no answer before the deadline: the device is offline"


def test_answers_that_match_nothing_change_nothing(
    server: IdentityServer, broker: Broker, device_factory: MakeDevice
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
        status, pending = server.call("POST", "/api/devices/cmd-b/commands",
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


def test_commands_need_the_operator_role(server: IdentityServer) -> None:
    assert server.post("/api/devices/cmd-a/commands", {"cmd": "ping"})[0] == 401  # no token
    viewer = server.add_user("wall-screen", "viewer")
    tech = server.add_user("tech-ben", "technician")
    for token in (viewer, tech):
        assert server.call("POST", "/api/devices/cmd-a/commands", {"cmd": "ping"},
                           token=token)[0] == 403  # fmt: skip
        assert server.call("PUT", "/api/devices/cmd-a/config", {"config": {}},
                           token=token)[0] == 403  # fmt: skip
    operator = server.add_user("op-ana", "operator")
    status, _ = server.call("POST", "/api/devices/cmd-a/commands", {"cmd": "ping",
                            "timeout_s": 1}, token=operator)  # fmt: skip
    assert status == 202
    _s, log = server.call("GET", "/api/audit?action=command.ping")
    assert any(e["actor"] == "op-ana" and e["target"] == "cmd-a" for e in log)


def test_bad_command_requests_are_refused(server: IdentityServer) -> None:
    assert server.call("POST", "/api/devices/nobody-here/commands", {"cmd": "ping"})[0] == 404
    assert server.call("POST", "/api/devices/cmd-a/commands", {"cmd": "format-disk"})[0] == 422
    assert server.call("POST", "/api/devices/cmd-a/commands", {"cmd": "ping", "x": 1})[0] == 422
    assert (
        server.call("POST", "/api/devices/cmd-a/commands", {"cmd": "ping", "timeout_s": 0})[0]
        == 422
    )
    assert server.get("/api/commands/c-doesnotexist")[0] == 404


def test_desired_config_is_versioned_retained_and_reported(
    server: IdentityServer, broker: Broker, ca: CertificateAuthority, device_factory: MakeDevice,
    tmp_path: Path,
) -> None:  # fmt: skip
    dev = Responder(broker, device_factory("cfg-a"))
    try:
        wait_for(lambda: server.device("cfg-a") is not None, 10, what="cfg-a known")
        status, first = server.call(
            "PUT", "/api/devices/cfg-a/config", {"config": {"heartbeat_s": 15}}
        )
        assert status == 200 and first["version"] == 1
        status, second = server.call("PUT", "/api/devices/cfg-a/config", {"config": {"fps": 2}})
        assert second["version"] == 2
        wait_for(lambda: server.get("/api/devices/cfg-a/config")[1]["reported_version"] == 2,
                 10, what="report of version 2")  # fmt: skip
        cfg = server.get("/api/devices/cfg-a/config")[1]
        assert (cfg["reported_ok"], cfg["reported_error"]) == (False, "heartbeat_s missing")
        # retained: a device that connects later still gets the latest desired config
        late = Client(broker.port, ca.root_cert_path, *server_creds(ca))
        late.subscribe(contract.topic("cfg-a", "config_desired"))
        got = json.loads(late.wait_for(contract.topic("cfg-a", "config_desired"))[0])
        late.close()
        assert (got["version"], got["config"]) == (2, {"fps": 2})
    finally:
        dev.close()


def test_round_trip_with_the_real_agent(
    server: IdentityServer, broker: Broker, device_factory: MakeDevice, tmp_path: Path
) -> None:
    images = write_test_images(tmp_path / "images", count=3)
    agent = agent_process(device_factory("cmd-agent"), broker.port, tmp_path / "agent",
                          heartbeat_s=5, camera_dir=images[0].parent).start()  # fmt: skip
    try:
        wait_for(lambda: (server.device("cmd-agent") or {}).get("state") == "online", 15,
                 what="agent online")  # fmt: skip

        def run(cmd: str, **args: object) -> dict[str, Any]:
            status, res = server.call("POST", "/api/devices/cmd-agent/commands?wait=true",
                                      {"cmd": cmd, "args": args, "timeout_s": 8})  # fmt: skip
            assert status == 202
            return dict(res)

        ping = run("ping")
        assert ping["state"] == "succeeded" and ping["result"]["pong"] is True
        logs = run("logs", lines=20)
        assert logs["state"] == "succeeded"
        assert any("connected to" in line for line in logs["result"]["lines"])
        snap = run("snapshot")
        assert snap["state"] == "succeeded"
        jpeg = base64.b64decode(snap["result"]["jpeg_b64"])
        assert jpeg[:3] == b"\xff\xd8\xff" and len(jpeg) == snap["result"]["bytes"]
        reboot = run("reboot")
        assert (reboot["state"], "not permitted" in reboot["error"]) == ("failed", True)
        assert run("relay")["state"] == "failed"
        # desired config: applied live, reported, and the heartbeat interval follows it
        status, cfg = server.call("PUT", "/api/devices/cmd-agent/config",
                                  {"config": {"heartbeat_s": 1}})  # fmt: skip
        assert status == 200
        wait_for(lambda: server.get("/api/devices/cmd-agent/config")[1]["reported_version"]
                 == cfg["version"], 10, what="config report")  # fmt: skip
        assert server.get("/api/devices/cmd-agent/config")[1]["reported_ok"] is True
        wait_for(lambda: (server.device("cmd-agent") or {}).get("heartbeat_interval_s") == 1,
                 10, what="heartbeats every second")  # fmt: skip
        status, bad = server.call("PUT", "/api/devices/cmd-agent/config",
                                  {"config": {"heartbeat_s": 1, "camera": "off"}})  # fmt: skip
        wait_for(lambda: server.get("/api/devices/cmd-agent/config")[1]["reported_version"]
                 == bad["version"], 10, what="refusal report")  # fmt: skip
        refused = server.get("/api/devices/cmd-agent/config")[1]
        assert refused["reported_ok"] is False and "camera" in refused["reported_error"]
        # a restart command: the process ends cleanly (systemd starts it again)
        assert run("restart")["state"] == "succeeded"
        wait_for(lambda: not agent.alive(), 10, what="agent exit")
        assert agent.proc is not None and agent.proc.returncode == 0
    finally:
        agent.stop()


def test_round_trip_with_the_real_micropython_node(
    server: IdentityServer, broker: Broker, device_factory: MakeDevice, tmp_path: Path
) -> None:
    """The server's commands reach the cabinet node (MQTT 3.1.1, cid in the payload) and
    its answers close them; the relay moves on the simulated board."""
    sim = tmp_path / "node" / "sim"
    node = node_process(device_factory("cmd-node"), broker.port, tmp_path / "node",
                        heartbeat_s=2, sim_dir=sim).start()  # fmt: skip
    try:
        wait_for(lambda: (server.device("cmd-node") or {}).get("state") == "online", 20,
                 what="node online")  # fmt: skip

        def run(cmd: str, **args: object) -> dict[str, Any]:
            status, res = server.call("POST", "/api/devices/cmd-node/commands?wait=true",
                                      {"cmd": cmd, "args": args, "timeout_s": 8})  # fmt: skip
            assert status == 202
            return dict(res)

        assert run("ping")["state"] == "succeeded"
        sensors = run("read_sensors")
        assert sensors["state"] == "succeeded" and isinstance(sensors["result"], dict)
        off = run("relay", action="off")  # box power off: the relay is energised
        assert off["state"] == "succeeded" and off["result"]["power"] == "off", off
        assert (sim / "pin_relay").read_text().strip() == "1"
        assert run("relay", action="on")["state"] == "succeeded"
        assert (sim / "pin_relay").read_text().strip() == "0"
        bad = run("relay", action="sideways")
        assert bad["state"] == "failed" and bad["error"]
        assert run("snapshot")["state"] == "failed"  # not a node command: refused with a reason
    finally:
        node.stop()
