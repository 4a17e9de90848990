"""One device with a valid certificate attacks the fleet while honest devices report
(issue 15): the scenario behind tests/test_guard_ingest.py and the bench
``honest_stored_under_attack``.

Honest devices send numbered heartbeats and events at a steady pace over real TLS
connections. The attacker, with its own valid certificate and a plain MQTT client, sends in
turn: malformed and adversarial payloads of every shape (deep nesting, huge numbers,
invalid UTF-8, lone surrogates, NUL, another device's id, oversized), events carrying the
honest devices' next event ids before they send them, and floods of heartbeats as fast as
QoS 1 with a wide window lets it; then (while the honest devices go on) it subscribes to
filters outside its own subtree (the server's shared group, every device's events, another
device's commands, ``$SYS/#``, ``#``) and connects with other clients' ids (an honest
device's, the server's). Everything it sends is counted, so that the caller can check that
each message was stored or refused with a reason, each SUBSCRIBE refused, nobody kicked.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware import contract

HB_INTERVAL_S = 0.2  # an honest device's heartbeat pace here (announced interval_s: 1)
EVENT_INTERVAL_S = 0.1


@dataclass(frozen=True)
class Creds:
    device_id: str
    root: Path
    cert: Path
    key: Path


@dataclass
class AttackReport:
    duration_s: float = 0.0
    honest_heartbeats: dict[str, int] = field(default_factory=dict)  # device -> sent
    honest_events: dict[str, int] = field(default_factory=dict)
    attack_sent: int = 0
    attack_kinds: Counter[str] = field(default_factory=Counter)  # what the attacker sent
    suback: dict[str, int] = field(default_factory=dict)  # foreign filter -> SUBACK code
    foreign_received: int = 0  # messages of others the attacker's subscriptions got
    honest_disconnects: int = 0  # honest connections lost during the run

    @property
    def attack_rate(self) -> float:
        return self.attack_sent / self.duration_s if self.duration_s else 0.0


def event_id(device_id: str, seq: int) -> str:
    return f"{device_id}-1-{seq}"  # the agent's form: <device>-<epoch>-<seq>


def _client(port: int, creds: Creds, client_id: str | None = None) -> mqtt.Client:
    cid = creds.device_id if client_id is None else client_id
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid,
                         protocol=mqtt.MQTTv5)  # fmt: skip
    client.tls_set(ca_certs=str(creds.root), certfile=str(creds.cert), keyfile=str(creds.key))
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("localhost", port, keepalive=30)
    client.loop_start()
    return client


def poison(device_id: str, victim: str) -> list[tuple[str, str, bytes]]:
    """(name, topic, payload) of the malformed and adversarial messages."""
    hb = contract.topic(device_id, "heartbeat")
    ev = contract.topic(device_id, "event")
    good = {"v": 1, "id": device_id, "ts": time.time(), "seq": 1, "kind": "agent",
            "interval_s": 30, "uptime_s": 1.0}  # fmt: skip
    head = json.dumps(good).encode()[:-1]
    many = {"v": 1, "id": device_id, "ts": 1.0, "seq": 1, "event_id": "x", "type": "t",
            "data": {"x": [0] * 5000}}  # fmt: skip
    return [
        ("deep-arrays", hb, b"[" * 4000 + b"]" * 4000),
        ("deep-objects", hb, b'{"a":' * 1300 + b"1" + b"}" * 1300),
        ("deep-field", hb, head + b', "hardware": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
        ("huge-int", hb, head + b', "mem_free": ' + b"9" * 400 + b"}"),
        ("int-digits", hb, head + b', "x": ' + b"9" * 5000 + b"}"),
        ("inf", hb, head + b', "x": 1e999}'),
        ("surrogate", hb, head + b', "camera": "\\ud800"}'),
        ("nul", hb, head + b', "camera": "a\\u0000b"}'),
        ("bad-utf8", hb, head + b', "camera": "\xff\xfe"}'),
        ("not-json", hb, b"{not json"),
        ("not-object", hb, b"[1, 2, 3]"),
        ("wrong-version", hb, json.dumps({**good, "v": 2}).encode()),
        ("bad-schema", hb, json.dumps({**good, "seq": "one"}).encode()),
        ("other-id", hb, json.dumps({**good, "id": victim}).encode()),
        ("oversized", hb, head + b', "pad": "' + b"x" * 9000 + b'"}'),
        ("many-values", ev, json.dumps(many).encode()),
        ("empty-status", contract.topic(device_id, "status"), b""),
    ]


class _Honest(threading.Thread):
    def __init__(self, port: int, creds: Creds, stop: threading.Event) -> None:
        super().__init__(name=f"honest-{creds.device_id}", daemon=True)
        self.creds = creds
        self.client = _client(port, creds)
        self.disconnects = 0
        self.client.on_disconnect = self._lost
        self.stop = stop
        self.heartbeats = 0
        self.events = 0
        self.error: BaseException | None = None

    def _lost(self, *_args: object) -> None:
        if not self.stop.is_set():
            self.disconnects += 1

    def run(self) -> None:
        dev = self.creds.device_id
        next_hb = next_ev = time.monotonic()
        infos: list[mqtt.MQTTMessageInfo] = []
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= next_hb:
                    self.heartbeats += 1
                    body = {"seq": self.heartbeats, "kind": "agent", "interval_s": 1,
                            "uptime_s": float(self.heartbeats)}  # fmt: skip
                    topic, raw, qos, _r = contract.encode("heartbeat", dev, body, time.time())
                    infos.append(self.client.publish(topic, raw, qos))
                    next_hb += HB_INTERVAL_S
                if now >= next_ev:
                    self.events += 1
                    body = {"seq": self.events, "event_id": event_id(dev, self.events),
                            "type": "track.new", "data": {"owner": dev}}  # fmt: skip
                    topic, raw, qos, _r = contract.encode("event", dev, body, time.time())
                    infos.append(self.client.publish(topic, raw, qos))
                    next_ev += EVENT_INTERVAL_S
                self.stop.wait(max(0.0, min(next_hb, next_ev) - time.monotonic()))
            for info in infos:
                info.wait_for_publish(30)
        except BaseException as exc:  # reported to the caller
            self.error = exc


class _Attacker(threading.Thread):
    def __init__(self, port: int, creds: Creds, victims: list[str], stop: threading.Event,
                 flood: int) -> None:  # fmt: skip
        super().__init__(name="attacker", daemon=True)
        self.creds = creds
        self.client = _client(port, creds)
        self.victims = victims
        self.stop = stop
        self.flood = flood  # heartbeats per round
        self.take_ids: list[str] = []
        self.identity_at = float("inf")  # monotonic time to turn to the identity attacks
        self.sent: Counter[str] = Counter()
        self.error: BaseException | None = None
        self.suback: dict[str, int] = {}
        self.foreign = 0
        self.thieves: list[mqtt.Client] = []
        self.port = port

    def _identity_attacks(self, take_ids: list[str]) -> None:
        """Other clients' ids (the server's, a device's), and foreign subscriptions."""
        dev = self.creds.device_id

        def got(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            if not msg.topic.startswith(f"{contract.TOPIC_ROOT}/{dev}/"):
                self.foreign += 1

        sub = _client(self.port, self.creds)  # a new connection (the flood's is done)
        self.thieves.append(sub)
        filters = [
            f"$share/{contract.SERVER_SHARE_GROUP}/{contract.TOPIC_ROOT}/+/heartbeat",
            f"{contract.TOPIC_ROOT}/+/event",
            f"{contract.TOPIC_ROOT}/{self.victims[0]}/cmd/req",
            "$SYS/#",
            "#",
        ]
        done = threading.Event()

        def on_subscribe(_c: mqtt.Client, _u: object, _mid: int, codes: list[object],
                         _p: object) -> None:  # fmt: skip
            for f, code in zip(filters, codes, strict=False):
                self.suback[f] = int(getattr(code, "value", code))  # type: ignore[call-overload]
            done.set()

        sub.on_message = got
        sub.on_subscribe = on_subscribe  # type: ignore[assignment]
        sub.subscribe([(f, 1) for f in filters])
        done.wait(10)
        self.sent["foreign-subscribe"] += len(filters)
        time.sleep(0.5)  # anything of the others' it would get
        # then take other clients' ids (the broker gives each its certificate's id)
        for cid in take_ids:
            self.thieves.append(_client(self.port, self.creds, cid))
            self.sent["stolen-client-id"] += 1
            time.sleep(0.2)

    def run(self) -> None:
        dev = self.creds.device_id
        seq = 0
        rounds = 0
        try:
            while not self.stop.is_set() and time.monotonic() < self.identity_at:
                rounds += 1
                last: mqtt.MQTTMessageInfo | None = None
                victim = self.victims[rounds % len(self.victims)]
                for name, topic, payload in poison(dev, victim):
                    last = self.client.publish(topic, payload, 1)
                    self.sent[name] += 1
                # the victims' next event ids, before the victims send them
                for n in range(rounds * 20, rounds * 20 + 20):  # each id once
                    for v in self.victims:
                        body = {"seq": n, "event_id": event_id(v, n), "type": "track.new",
                                "data": {"owner": dev}}  # fmt: skip
                        topic, raw, qos, _r = contract.encode("event", dev, body, time.time())
                        last = self.client.publish(topic, raw, qos)
                        self.sent["stolen-event-id"] += 1
                for _ in range(self.flood):
                    seq += 1
                    body = {"seq": seq, "kind": "agent", "interval_s": 1, "uptime_s": 1.0}
                    topic, raw, qos, _r = contract.encode("heartbeat", dev, body, time.time())
                    last = self.client.publish(topic, raw, qos)
                    self.sent["flood"] += 1
                if last is not None:
                    last.wait_for_publish(30)  # a window of at most one round in flight
            self._identity_attacks(self.take_ids)  # while the honest devices go on
        except BaseException as exc:  # reported to the caller
            self.error = exc


def run(port: int, honest: list[Creds], attacker: Creds, duration_s: float,
        flood: int = 500, take_ids: tuple[str, ...] = ()) -> AttackReport:  # fmt: skip
    """Honest devices report and the attacker attacks for ``duration_s``; returns what
    each sent (every QoS 1 publish acknowledged by the broker). ``take_ids``: client ids
    the attacker also connects with (the server's, say); it always tries an honest
    device's, and subscribes to filters outside its own subtree."""
    stop = threading.Event()
    workers = [_Honest(port, c, stop) for c in honest]
    bad = _Attacker(port, attacker, [c.device_id for c in honest], stop, flood)
    bad.take_ids = [*take_ids, honest[0].device_id]
    bad.identity_at = time.monotonic() + 0.5 + duration_s * 0.6
    time.sleep(0.5)  # the connections up
    start = time.monotonic()
    for w in workers:
        w.start()
    bad.start()
    time.sleep(duration_s)
    stop.set()
    for t in (*workers, bad):
        t.join(60)
    report = AttackReport(duration_s=time.monotonic() - start)
    for w in workers:
        if w.error is not None:
            raise RuntimeError(f"honest device {w.creds.device_id} failed: {w.error!r}")
        report.honest_heartbeats[w.creds.device_id] = w.heartbeats
        report.honest_events[w.creds.device_id] = w.events
    if bad.error is not None:
        raise RuntimeError(f"the attacker failed: {bad.error!r}")
    # messages only: the identity attacks are judged by the broker (SUBACK, client ids)
    report.attack_sent = sum(n for k, n in bad.sent.items()
                             if k not in ("stolen-client-id", "foreign-subscribe"))  # fmt: skip
    report.attack_kinds = bad.sent
    report.suback = dict(bad.suback)
    report.foreign_received = bad.foreign
    report.honest_disconnects = sum(w.disconnects for w in workers)
    for c in (*[w.client for w in workers], bad.client, *bad.thieves):
        c.disconnect()
        c.loop_stop()
    return report
