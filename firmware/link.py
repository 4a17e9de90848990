# The node's MQTT link: what it sends (status, heartbeats, replies, events from the ring)
# and how it connects and reconnects. A mixin of node.Node, which holds the state
# (NodeState names it for type checkers), plus the payload builders it uses.

import gc
import math
import os
import random
import sys

try:
    import clock
    import config
    import contract
    import mqtt
    import timecheck
    import version
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import clock, config, contract, mqtt, timecheck, version

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    from firmware import cabinet, commands, hal, ring, supervisor

KIND = "node"
LOOP_MS = 250  # longest wait of the main loop
_FLUSH_MAX = 8  # events sent per loop, so that the other tasks keep running
_REPLIES_MAX = 8  # replies waiting to be sent
log = clock.log


def ms(seconds: float) -> int:
    return int(seconds * 1000)


def version_string(impl_version: "tuple[Any, ...]") -> str:
    """ "1.29.0" or "1.29.0-preview" from sys.implementation.version."""
    text = "%d.%d.%d" % (impl_version[0], impl_version[1], impl_version[2])
    if len(impl_version) > 3 and impl_version[3] and isinstance(impl_version[3], str):
        text += "-" + impl_version[3]
    return text


def versions() -> dict[str, str]:
    return {"firmware": version.VERSION, "micropython": version_string(sys.implementation.version)}


def mem_free() -> int | None:
    fn = getattr(gc, "mem_free", None)
    return fn() if fn is not None else None


def hardware() -> "dict[str, Any]":
    """The node's inventory (heartbeat ``hardware``): board, platform, Python heap size and
    the chip's unique id where the board has one (not on the unix port)."""
    hw: "dict[str, Any]" = {"platform": sys.platform}
    model = getattr(sys.implementation, "_machine", None)
    if isinstance(model, str) and model:
        hw["model"] = model[:64]
    free = getattr(gc, "mem_free", None)
    alloc = getattr(gc, "mem_alloc", None)
    if free is not None and alloc is not None:
        hw["heap_kb"] = (free() + alloc()) // 1024
    try:
        import binascii

        import machine

        hw["uid"] = binascii.hexlify(machine.unique_id()).decode()
    except (ImportError, AttributeError):
        pass  # no machine module (CPython) or no unique id (unix port)
    return hw


def _finite(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


def heartbeat_body(
    seq: int,
    interval_s: float,
    uptime_s: float,
    free: int | None,
    readings: "dict[str, Any]",
    vers: dict[str, str],
    outbox: int | None = None,
    counters: "dict[str, int] | None" = None,
) -> "dict[str, Any]":
    """A node heartbeat; readings the contract would refuse (a broken sensor) are left out."""
    body: "dict[str, Any]" = {
        "kind": KIND,
        "seq": seq,
        "interval_s": interval_s,
        "uptime_s": uptime_s,
        "versions": vers,
    }
    if isinstance(free, int) and not isinstance(free, bool) and free >= 0:
        body["mem_free"] = free
    if isinstance(outbox, int) and outbox >= 0:
        body["outbox"] = outbox
    if counters:  # outbox_unreceipted, outbox_dropped
        for key in counters:
            body[key] = counters[key]
    cause = readings.get("reset_cause")
    if isinstance(cause, str) and 0 < len(cause) <= 32:
        body["reset_cause"] = cause
    temp = readings.get("temp_c")
    if temp is not None and _finite(temp) and -60 <= temp <= 150:
        body["temp_c"] = temp
    rssi = readings.get("rssi")
    if isinstance(rssi, int) and not isinstance(rssi, bool) and -200 <= rssi <= 50:
        body["rssi"] = rssi
    return body


def status_body(state: str, reason: str | None = None) -> dict[str, str]:
    body = {"state": state, "kind": KIND}
    if reason:
        body["reason"] = reason
    return body


def seed_random() -> None:
    """Seed the RNG from the hardware source, so that nodes do not share one jitter."""
    urandom = getattr(os, "urandom", None)
    if urandom is not None and hasattr(random, "seed"):
        random.seed(int.from_bytes(urandom(4), "big"))


def rnd() -> float:
    fn = getattr(random, "random", None)
    if fn is not None:
        return fn()
    return random.getrandbits(24) / 16777216


def tls_context(cfg: "dict[str, Any]") -> "Any":
    """Client TLS context: our certificate and key, the fleet root, server checked."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED  # MicroPython does not verify unless told
    with open(cfg["ca"], "rb") as f:
        ctx.load_verify_locations(cadata=f.read())
    with open(cfg["cert"], "rb") as f:
        cert = f.read()
    with open(cfg["key"], "rb") as f:
        ctx.load_cert_chain(cert, f.read())
    return ctx


class NodeState:
    """What node.Node holds, named for the type checker (the mixins share it)."""

    cfg: "dict[str, Any]"
    hal: "hal.HAL"
    rnd: "Callable[[], float]"
    device_id: str
    uptime: "clock.Uptime"
    state_dir: str
    boot_settings: "dict[str, Any]"
    settings: "dict[str, Any]"
    version: int
    heartbeat: "clock.Every"
    sensors: "clock.Every"
    ring: "ring.Ring"
    box: "supervisor.Supervisor"
    cabinet: "cabinet.Cabinet"
    recent: "commands.Recent"
    replies: "list[tuple[str, dict[str, Any]]]"
    readings: "dict[str, Any]"
    seq: int
    attempt: int
    retry_at: int
    received: int
    rejected: int
    reset_note: "dict[str, Any] | None"
    client: "mqtt.MQTTClient"
    _reset_by: int
    _box_topic: str | None
    _own: str
    rx_wait_ms: int  # the wait for a receipt before sending again (0: no receipts)
    rx_since: int  # ticks of the last receipt progress or first unreceipted send
    event: "Callable[[str, dict[str, Any]], None]"
    _state: "Callable[[str], str]"


class Link(NodeState):
    hw_due = False  # the inventory goes in the first heartbeat after each connect

    def publish(self, kind: str, body: "dict[str, Any]") -> None:
        topic, data, qos, retain = contract.encode(kind, self.device_id, body, clock.unix_time())
        self.client.publish(topic, data, qos, retain, ms(self.cfg["ack_timeout_s"]))

    def connect(self) -> None:
        gc.collect()
        cfg = self.cfg
        if not self.hal.network_up(cfg):
            raise mqtt.NetworkError("network not up")
        now = clock.unix_time()
        last_good = timecheck.parse_last_good(config.read_json(self._state("last_good.json")))
        if not timecheck.clock_ok(now, timecheck.RELEASE_FLOOR, last_good):
            behind = timecheck.seconds_behind(now, timecheck.RELEASE_FLOOR, last_good)
            raise mqtt.NetworkError("clock %d s behind its floor: waiting for time" % behind)
        will = contract.encode(
            "status", self.device_id, status_body("offline", "connection_lost"), clock.unix_time()
        )
        self.client.set_last_will(will[0], will[1], will[2], will[3])
        log("I", "connecting to %s:%d", cfg["broker_host"], cfg["broker_port"])
        session = self.client.connect()
        self._box_topic = None
        self.publish("status", status_body("online"))
        for kind in ("cmd_req", "config_desired", "update_desired", "receipt"):
            if kind != "receipt" or self.rx_wait_ms:
                self.client.subscribe(contract.topic(self.device_id, kind), 1)
        self.ring.rewind()  # what was sent and not receipted goes again, in order
        self.attempt = 0
        self.heartbeat.reset()
        self.hw_due = True
        self.box.link(True, clock.ticks_ms())
        config.write_json(self._state("last_good.json"), "%d" % now)
        log("I", "online as %s (session kept: %s)", self.device_id, session)

    def _box_wanted(self) -> str | None:
        box = self.settings["box_id"]
        return contract.topic(box, "heartbeat") if box else None

    def _subscribe_box(self) -> None:
        """Follow the paired box's heartbeats (QoS 0: none queued while we are away)."""
        old, new = self._box_topic, self._box_wanted()
        self._box_topic = None
        if old:
            self.client.unsubscribe(old)
        if new:
            self.client.subscribe(new, 0)
            log("I", "watching box heartbeats on %s", new)
        self._box_topic = new

    def backoff(self) -> None:
        cfg = self.cfg
        delay = contract.reconnect_delay(
            self.attempt,
            self.rnd(),
            cfg["reconnect_base_s"],
            cfg["reconnect_cap_s"],
            cfg["reconnect_first_spread_s"],
        )
        self.attempt += 1
        self.retry_at = clock.ticks_add(clock.ticks_ms(), ms(delay))
        log("I", "reconnect attempt %d in %d ms", self.attempt, ms(delay))

    def send_heartbeat(self) -> None:
        seq = self.seq
        self.seq += 1  # a retransmission keeps its seq; a new heartbeat never reuses one
        r = self.readings
        temp = r.get("temp_c")
        readings = {
            "reset_cause": self.hal.reset_cause(),
            "temp_c": temp if temp is not None else self.hal.temperature_c(),
            "rssi": self.hal.rssi(),
        }
        gc.collect()  # so that mem_free says what is really free
        body = heartbeat_body(
            seq,
            self.settings["heartbeat_s"],
            self.uptime.ms / 1000,
            mem_free(),
            readings,
            versions(),
            self.ring.pending(),
            {"outbox_unreceipted": self.ring.unreceipted(), "outbox_dropped": self.ring.dropped},
        )
        if self.hw_due:
            body["hardware"] = hardware()
        self.publish("heartbeat", body)
        self.hw_due = False

    def flush(self) -> None:
        """Send waiting replies, then any drop report, then events from the ring in order."""
        while self.replies:
            kind, body = self.replies[0]
            self.publish(kind, body)
            self.replies.pop(0)
        report = self.ring.drop_report()
        if report is not None:
            seq = report["last_seq"]  # the report stands in for the events it lost
            body = {
                "seq": seq,
                "event_id": "%s-%d-dropped" % (self.device_id, seq),
                "type": "buffer.dropped",
                "data": report,
            }
            if self.rx_wait_ms:  # wire numbers of its stream
                r = self.ring
                report["first_seq"] = r.wire(report["first_seq"])
                report["last_seq"] = seq = r.wire(seq)
                body["seq"] = seq
                body["epoch"] = r.epoch
                body["event_id"] = "%s-%s-%d-dropped" % (self.device_id, r.epoch, seq)
            self.publish("event", body)
            self.ring.reported()
            log("W", "reported %d events dropped from a full ring", report["dropped"])
        topic = contract.topic(self.device_id, "event")
        for _ in range(_FLUSH_MAX):
            item = self.ring.peek()
            if item is None:
                return
            self.client.publish(topic, item[1], 1, False, ms(self.cfg["ack_timeout_s"]))
            if not self.rx_wait_ms:
                self.ring.ack(item[0])
                continue
            if not self.ring.unreceipted():
                self.rx_since = clock.ticks_ms()  # the wait for a receipt starts
            self.ring.mark_sent(item[0])

    # ------------------------------------------------------------ receipts

    def on_receipt(self, body: "dict[str, Any]") -> None:
        """A receipt from the server: the events it names leave the ring. One for another
        stream, malformed, or naming events never made deletes nothing."""
        r = self.ring
        try:
            ranges = contract.receipt_ranges(body, r.epoch, r.wire(r.next))
        except contract.ProtocolError as exc:
            self.rejected += 1
            log("W", "receipt refused: %s", exc)
            return
        if r.receipt(ranges):
            self.rx_wait_ms = ms(self.cfg["receipt_timeout_s"])
            self.rx_since = clock.ticks_ms()

    def check_receipts(self, now: int) -> None:
        """Sent events without a receipt for the wait go again, from the oldest; each
        round without a receipt doubles the wait, up to receipt_timeout_cap_s."""
        if not self.rx_wait_ms or not self.ring.unreceipted():
            return
        if clock.ticks_diff(now, self.rx_since) < self.rx_wait_ms:
            return
        log("W", "no receipt for %d events in %d s: sending again", self.ring.unreceipted(),
            self.rx_wait_ms // 1000)  # fmt: skip
        self.ring.rewind()
        cap = ms(self.cfg["receipt_timeout_cap_s"])
        self.rx_wait_ms = self.rx_wait_ms * 2 if self.rx_wait_ms * 2 < cap else cap
        self.rx_since = now

    def reply(self, kind: str, body: "dict[str, Any]") -> None:
        if len(self.replies) >= _REPLIES_MAX:
            dropped = self.replies.pop(0)
            log("W", "reply queue full: dropped a %s", dropped[0])
        self.replies.append((kind, body))

    def _goodbye(self, reason: str) -> None:
        if self.client.connected:
            try:
                self.publish("status", status_body("offline", reason))
                self.client.disconnect()
            except (OSError, MemoryError, mqtt.MQTTError) as exc:
                self.client.close()
                log("W", "could not say offline: %s", exc)
