# The camfleet node: a fleet member on the cabinet microcontroller.
#
# It connects to the broker over mutual TLS (its own certificate; the broker's checked
# against the fleet root), leaves a retained "offline" status as its last will, says
# "online", subscribes to its commands and desired config, sends a heartbeat every
# heartbeat_s, feeds the watchdog from its main loop, and reconnects after any network or
# MQTT error with full-jitter backoff whose first retry is spread out (contract).
#
# The deciding parts are plain functions and small classes on data (config checking,
# heartbeat body, clock.Every, clock.Uptime); Node holds the I/O.

import gc
import json
import math
import os
import random
import sys

try:
    import clock
    import contract
    import hal
    import mqtt
    import version
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import clock, contract, hal, mqtt, version

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

KIND = "node"
_LOOP_MS = 250  # longest sleep of the main loop (the watchdog is fed at least this often)

# name -> (type, default or None when required, min, max)
_CONFIG = {
    "device_id": ("str", None, None, None),
    "broker_host": ("str", None, None, None),
    "broker_port": ("int", 8883, 1, 65535),
    "server_hostname": ("str", "", None, None),  # TLS name to check; "" = broker_host
    "ca": ("str", "root.der", None, None),  # DER files; relative to the config file
    "cert": ("str", "cert.der", None, None),
    "key": ("str", "key.der", None, None),
    "heartbeat_s": ("num", 60, 1, 86400),
    "keepalive_s": ("int", 60, 1, 65535),
    "reconnect_base_s": ("num", 1.0, 0.01, 3600),
    "reconnect_cap_s": ("num", 300.0, 0.1, 86400),
    "reconnect_first_spread_s": ("num", 20.0, 0, 3600),
    "connect_timeout_s": ("num", 5, 0.5, 120),
    "ack_timeout_s": ("num", 10, 0.5, 120),
    "watchdog_ms": ("int", 8000, 1000, 600000),
    "max_packet": ("int", 20480, 1024, 262144),
    "hal": ("str", "sim", None, None),
    "sim_dir": ("str", "sim", None, None),
    "pins": ("dict", {}, None, None),
}
_PATHS = ("ca", "cert", "key", "sim_dir")
_T0 = clock.ticks_ms()


class ConfigError(Exception):
    """The node configuration is not usable; the message says which key and why."""


def log(level: str, fmt: str, *args: object) -> None:
    """One line on stdout: seconds since start, level letter, message. Never key material."""
    ms = clock.ticks_diff(clock.ticks_ms(), _T0)
    print("[%6d.%03d] %s node: %s" % (ms // 1000, ms % 1000, level, fmt % args if args else fmt))


# ---------------------------------------------------------------- config


def _join(base_dir: str, path: str) -> str:
    if not base_dir or path.startswith("/"):
        return path
    return base_dir.rstrip("/") + "/" + path


def load_config(raw: object, base_dir: str = "") -> "dict[str, Any]":
    """Check a config dict and fill in defaults. Relative paths are taken from base_dir."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a JSON object")
    for key in raw:
        if key not in _CONFIG:
            raise ConfigError("unknown config key %r" % (key,))
    cfg: "dict[str, Any]" = {}
    for key, spec in _CONFIG.items():
        want, default, lo, hi = spec
        if key not in raw:
            if default is None:
                raise ConfigError("missing config key %r" % (key,))
            cfg[key] = default
            continue
        value = raw[key]
        if not contract.type_ok(value, want):
            raise ConfigError("config key %r must be %s" % (key, want))
        if lo is not None and (value < lo or value > hi):
            raise ConfigError("config key %r must be in %s..%s" % (key, lo, hi))
        cfg[key] = value
    if not contract.valid_device_id(cfg["device_id"]):
        raise ConfigError("invalid device_id %r" % (cfg["device_id"],))
    if cfg["hal"] not in ("sim", "machine", "none"):
        raise ConfigError("hal must be sim, machine or none")
    if not cfg["server_hostname"]:
        cfg["server_hostname"] = cfg["broker_host"]
    for key in _PATHS:
        cfg[key] = _join(base_dir, cfg[key])
    return cfg


def load_config_file(path: str) -> "dict[str, Any]":
    with open(path) as f:
        raw = json.load(f)
    slash = path.rfind("/")
    return load_config(raw, path[:slash] if slash > 0 else "")


# ---------------------------------------------------------------- payloads


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


def _rnd() -> float:
    fn = getattr(random, "random", None)
    if fn is not None:
        return fn()
    return random.getrandbits(24) / 16777216


# ---------------------------------------------------------------- the node


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


class Node:
    def __init__(
        self,
        cfg: "dict[str, Any]",
        board: hal.HAL,
        ssl_context: "Any" = None,
        rnd: "Callable[[], float]" = _rnd,
    ) -> None:
        self.cfg = cfg
        self.hal = board
        self.rnd = rnd
        self.device_id = cfg["device_id"]
        self.uptime = clock.Uptime(clock.ticks_ms())
        self.heartbeat = clock.Every(int(cfg["heartbeat_s"] * 1000))
        self.seq = 0
        self.attempt = 0
        self.received = 0
        self.client = mqtt.MQTTClient(
            self.device_id,
            cfg["broker_host"],
            cfg["broker_port"],
            ssl_context=ssl_context,
            server_hostname=cfg["server_hostname"],
            keepalive=cfg["keepalive_s"],
            clean_session=False,
            max_packet=cfg["max_packet"],
            timeout_ms=int(cfg["connect_timeout_s"] * 1000),
        )
        self.client.on_message = self.on_message
        self.client.on_wait = self.tick

    def tick(self) -> int:
        """Feed the watchdog and keep the uptime; called often from every loop."""
        self.hal.watchdog_feed()
        return self.uptime.update(clock.ticks_ms())

    def publish(self, kind: str, body: "dict[str, Any]") -> None:
        topic, data, qos, retain = contract.encode(kind, self.device_id, body, clock.unix_time())
        self.client.publish(topic, data, qos, retain, int(self.cfg["ack_timeout_s"] * 1000))

    def connect(self) -> None:
        gc.collect()
        cfg = self.cfg
        will = contract.encode(
            "status", self.device_id, status_body("offline", "connection_lost"), clock.unix_time()
        )
        self.client.set_last_will(will[0], will[1], will[2], will[3])
        log("I", "connecting to %s:%d", cfg["broker_host"], cfg["broker_port"])
        session = self.client.connect()
        self.publish("status", status_body("online"))
        for kind in ("cmd_req", "config_desired"):
            self.client.subscribe(contract.topic(self.device_id, kind), 1)
        log("I", "online as %s (session kept: %s)", self.device_id, session)

    def send_heartbeat(self) -> None:
        seq = self.seq
        self.seq += 1  # a retransmission keeps its seq; a new heartbeat never reuses one
        uptime_s = self.uptime.ms / 1000
        gc.collect()  # so that mem_free says what is really free
        body = heartbeat_body(
            seq, self.cfg["heartbeat_s"], uptime_s, mem_free(), self.hal.readings(), versions()
        )
        self.publish("heartbeat", body)

    def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        try:
            _device, kind, _body = contract.decode(topic, payload)
        except contract.ProtocolError as exc:
            log("W", "rejected message on %s: %s", topic, exc)
            return
        self.received += 1
        note = " (retained)" if retain else ""
        log("I", "received %s%s: not handled by this firmware yet", kind, note)

    def serve(self) -> None:
        """Main loop while connected; returns only by raising."""
        self.heartbeat.reset()
        while True:
            self.tick()
            now = clock.ticks_ms()
            if self.heartbeat.due(now):
                self.send_heartbeat()
                now = clock.ticks_ms()
            left = self.heartbeat.ms_left(now)
            self.client.wait_msg(min(max(left, 1), _LOOP_MS))

    def sleep(self, seconds: float) -> None:
        end = clock.ticks_add(clock.ticks_ms(), int(seconds * 1000))
        while True:
            self.tick()
            left = clock.ticks_diff(end, clock.ticks_ms())
            if left <= 0:
                return
            clock.sleep_ms(left if left < _LOOP_MS else _LOOP_MS)

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
        log("I", "reconnect attempt %d in %d ms", self.attempt, int(delay * 1000))
        self.sleep(delay)

    def run(self) -> None:
        """Connect, serve, reconnect, forever; KeyboardInterrupt stops cleanly."""
        self.hal.watchdog_start(self.cfg["watchdog_ms"])
        try:
            while True:
                try:
                    self.connect()
                    self.attempt = 0
                    self.serve()
                except (OSError, MemoryError, mqtt.MQTTError) as exc:
                    self.client.close()
                    log("W", "%s: %s", type(exc).__name__, exc)
                    gc.collect()
                self.backoff()
        except KeyboardInterrupt:
            self.shutdown()

    def shutdown(self) -> None:
        """Say offline (the broker drops the will on DISCONNECT), then disconnect."""
        log("I", "stopping")
        if self.client.connected:
            try:
                self.publish("status", status_body("offline", "stopped"))
                self.client.disconnect()
            except (OSError, mqtt.MQTTError) as exc:
                self.client.close()
                log("W", "could not say offline: %s", exc)
        log("I", "stopped")


def main(config_path: str) -> int:
    """Entry point: returns a process exit code (2 when the node cannot start)."""
    seed_random()
    try:
        cfg = load_config_file(config_path)
        ctx = tls_context(cfg)
        board = hal.make_hal(cfg)
    except (OSError, ValueError, ConfigError, hal.HALError) as exc:
        log("E", "cannot start: %s", exc)
        return 2
    log(
        "I",
        "camfleet node %s, firmware %s, hal %s, reset cause %s",
        cfg["device_id"],
        version.VERSION,
        board.name,
        board.reset_cause(),
    )
    Node(cfg, board, ctx).run()
    return 0
