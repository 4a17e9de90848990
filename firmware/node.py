# The camfleet node: a fleet member on the cabinet microcontroller that supervises its
# cabinet and the edge box beside it.
#
# One loop, three tasks, each a short step:
#   box      the box supervisor (supervisor.py): heartbeat line, power-cut relay
#   cabinet  door, tamper, power and climate sensors turned into events (cabinet.py)
#   link     the MQTT link (link.py): connect (TLS, kept session, last will), heartbeats,
#            replies and events out; commands and desired config in (inbox.py)
# Every event goes through the flash ring (ring.py) and is sent from there, in order.
# The watchdog is fed only while every task keeps finishing its steps (clock.Liveness):
# a task that hangs or keeps failing lets the board reset, and the next boot reports why.
#
# The deciding parts live in small modules on plain data; Node holds the I/O.

import gc
import os
import sys

try:
    import cabinet
    import clock
    import commands
    import config
    import contract
    import hal
    import inbox
    import link
    import mqtt
    import ring
    import supervisor
    import version
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import (
        cabinet,
        clock,
        commands,
        config,
        contract,
        hal,
        inbox,
        link,
        mqtt,
        ring,
        supervisor,
        version,
    )

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

ConfigError = config.ConfigError
load_config = config.load_config
load_config_file = config.load_config_file
log = clock.log
# the payload builders live with the link; named here for the entry point and tests
KIND = link.KIND
LOOP_MS = link.LOOP_MS
heartbeat_body = link.heartbeat_body
status_body = link.status_body
version_string = link.version_string
versions = link.versions
tls_context = link.tls_context
_ms = link.ms


class Node(link.Link, inbox.Inbox):
    def __init__(
        self,
        cfg: "dict[str, Any]",
        board: hal.HAL,
        ssl_context: "Any" = None,
        rnd: "Callable[[], float]" = link.rnd,
        app_root: str = "",
    ) -> None:
        self.cfg = cfg
        self.app_root = app_root  # where boot.py, main.py and the update slots are
        self.hal = board
        self.rnd = rnd
        self.device_id = cfg["device_id"]
        now = clock.ticks_ms()
        self.uptime = clock.Uptime(now)
        self.state_dir = cfg["state_dir"]
        try:
            os.mkdir(self.state_dir)
        except OSError:
            pass  # there already
        self.boot_settings = config.boot_settings(cfg)
        self.settings = self.boot_settings
        self.version = -1  # version of the desired config applied; -1: none yet
        saved = config.read_json(self._state("desired.json"))
        if isinstance(saved, dict) and isinstance(saved.get("version"), int):
            try:
                self.settings = config.desired_settings(
                    self.boot_settings, saved.get("config"), self.device_id
                )
                self.version = saved["version"]
            except ConfigError as exc:
                log("W", "saved desired config not usable: %s", exc)
        s = self.settings
        self.heartbeat = clock.Every(_ms(s["heartbeat_s"]))
        self.sensors = clock.Every(_ms(s["sensor_s"]))
        self.ring = ring.Ring(self._state("events"), cfg["ring_slots"])
        self.box = supervisor.Supervisor(s, config.read_json(self._state("box.json")), now)
        self.cabinet = cabinet.Cabinet(s)
        self.live = clock.Liveness()
        for task in ("box", "cabinet", "link"):
            self.live.add(task, _ms(cfg["task_stall_s"]), now)
        self.recent = commands.Recent()
        self.replies: "list[tuple[str, dict[str, Any]]]" = []
        self.readings: "dict[str, Any]" = {}
        self.seq = 0
        self.attempt = 0
        self.retry_at = now
        self.received = 0
        self.rejected = 0
        self.reset_note: "dict[str, Any] | None" = None
        self._reset_by = now
        self._stall_noted = False
        self._failing: list[str] = []
        self._box_topic: str | None = None
        self._own = contract.TOPIC_ROOT + "/" + self.device_id + "/"
        self.rx_wait_ms, self.rx_since = _ms(cfg["receipt_timeout_s"]), now
        self.client = mqtt.MQTTClient(
            self.device_id,
            cfg["broker_host"],
            cfg["broker_port"],
            ssl_context=ssl_context,
            server_hostname=cfg["server_hostname"],
            keepalive=cfg["keepalive_s"],
            clean_session=False,
            max_packet=cfg["max_packet"],
            timeout_ms=_ms(cfg["connect_timeout_s"]),
        )
        self.client.on_message = self.on_message
        self.client.on_oversized = self.on_oversized
        self.client.on_wait = self.feed
        self._ota_boot()

    def _ota_boot(self) -> None:
        self.ota_msg: "dict[str, Any] | None" = None  # update/desired, for trial.py
        self.ota: "Any" = None  # trial.Trial while an update needs it
        if self._ota_due():
            self.ota = self._ota_load()

    def _ota_due(self) -> bool:
        sel = config.read_json((self.app_root or ".") + "/slots.json")
        if isinstance(sel, dict) and (sel.get("trial") or sel.get("rolled_back")):
            return True
        rec = config.read_json(self._state("update.json"))
        return isinstance(rec, dict) and rec.get("state") == "failed" and not rec.get("reported")

    def _ota_load(self) -> "Any":
        gc.collect()
        try:
            import trial
        except ImportError:
            from firmware import trial
        return trial.Trial(self)

    def _ota_step(self) -> None:
        """Updates (trial.py), only while one needs it and after a heartbeat, when the
        heap has settled; its module is dropped again when it has nothing left to do."""
        if self.ota is None:
            if self.ota_msg is None or not self.seq:
                return
            self.ota = self._ota_load()
        self.ota.step()
        if self.ota.idle():
            self.ota = None
            sys.modules.pop("trial", None)

    def _state(self, name: str) -> str:
        return self.state_dir + "/" + name

    # ------------------------------------------------------------ boot, events, watchdog

    def start(self) -> None:
        """Report the boot (and why the last run ended), then arm the watchdog."""
        data: "dict[str, Any]" = {
            "reset_cause": self.hal.reset_cause(),
            "firmware": version.VERSION,
        }
        note = config.read_json(self._state("note.json"))
        if isinstance(note, dict):
            os.remove(self._state("note.json"))
            if isinstance(note.get("note"), str):
                data["note"] = note["note"][:64]
            cid = note.get("cid")
            if isinstance(cid, str):  # a redelivered reboot request must not reboot again
                self.recent.add(cid, commands.answer(cid, {"rebooting": True}))
        self.event("node.boot", data)
        self.hal.watchdog_start(self.cfg["watchdog_ms"])

    def event(self, kind: str, data: "dict[str, Any]") -> None:
        """Write an event to the ring; the link sends it from there."""
        seq = self.ring.next
        ts = clock.unix_time()
        body = {
            "seq": seq,
            "event_id": "%s-%d-%d" % (self.device_id, seq, int(ts)),
            "type": kind,
            "data": data,
        }
        if self.rx_wait_ms:  # receipts: the stream's own numbers, from 0 (ring.py)
            seq = self.ring.wire(seq)
            body["seq"] = seq
            body["epoch"] = self.ring.epoch
            body["event_id"] = "%s-%s-%d" % (self.device_id, self.ring.epoch, seq)
        try:
            self.ring.push(contract.encode("event", self.device_id, body, ts)[1])
        except (ring.RingError, contract.ProtocolError, OSError) as exc:
            log("E", "event %s not kept: %s", kind, exc)
            return
        log("I", "event %d %s %s", seq, kind, data)

    def feed(self) -> None:
        """Feed the watchdog if every task is alive; called from every loop and wait."""
        now = clock.ticks_ms()
        self.uptime.update(now)
        stalled = self.live.stalled(now)
        if stalled is None:
            self._stall_noted = False
            self.hal.watchdog_feed()
            return
        if not self._stall_noted:
            self._stall_noted = True
            log("E", "task %s stalled: not feeding the watchdog", stalled)
            try:
                config.write_json(self._state("note.json"), {"note": "stalled: " + stalled})
            except OSError:
                pass

    def _task(self, name: str, step: "Callable[[int], None]", now: int) -> None:
        try:
            step(now)
        except Exception as exc:  # a failing task must not stop the others; it stops its beat
            if name not in self._failing:
                self._failing.append(name)
                log("E", "task %s failed: %s: %s", name, type(exc).__name__, exc)
            return
        if name in self._failing:
            self._failing.remove(name)
            log("I", "task %s recovered", name)
        self.live.beat(name, clock.ticks_ms())

    # ------------------------------------------------------------ tasks

    def step_box(self, now: int) -> None:
        box = self.box
        box.line(self.hal.box_line(), now)
        for kind, data in box.step(now, int(clock.unix_time())):
            self.event(kind, data)
        if box.relay != self.hal.relay():
            self.hal.set_relay(box.relay)
        if box.dirty:
            config.write_json(self._state("box.json"), box.state_dict())

    def step_cabinet(self, now: int) -> None:
        if not self.sensors.due(now):
            return
        b = self.hal
        r: "dict[str, Any]" = {
            "door": b.door_open(),
            "tamper": b.tamper(),
            "mains": b.mains_ok(),
            "battery_v": b.battery_v(),
        }
        try:
            climate = b.climate()
            if climate is not None:
                r["temp_c"], r["humidity_pct"] = climate
        except OSError as exc:
            r["climate_error"] = str(exc) or repr(exc)
        self.readings = r
        for kind, data in self.cabinet.update(r):
            self.event(kind, data)

    def step_link(self, now: int) -> None:
        client = self.client
        try:
            if not client.connected:
                wait = clock.ticks_diff(self.retry_at, now)
                if wait > 0:
                    clock.sleep_ms(wait if wait < LOOP_MS else LOOP_MS)
                    return
                self.connect()
                now = clock.ticks_ms()
            if self._box_topic != self._box_wanted():
                self._subscribe_box()
            self.flush()
            self.check_receipts(clock.ticks_ms())
            if self.heartbeat.due(clock.ticks_ms()):
                self.send_heartbeat()
            left = 1 if self.ring.pending() else self.heartbeat.ms_left(clock.ticks_ms())
            client.wait_msg(min(max(left, 1), LOOP_MS))
            if client.connected:
                self._ota_step()
        except (OSError, MemoryError, mqtt.MQTTError) as exc:
            client.close()
            self.box.link(False, clock.ticks_ms())
            log("W", "%s: %s", type(exc).__name__, exc)
            gc.collect()
            self.backoff()

    # ------------------------------------------------------------ run

    def loop_once(self) -> None:
        now = clock.ticks_ms()
        if self.ota is not None:
            self.ota.check(now)
        self._task("box", self.step_box, now)
        self._task("cabinet", self.step_cabinet, now)
        self.feed()
        self._task("link", self.step_link, now)
        if self.reset_note is not None and (
            not self.replies or clock.ticks_diff(clock.ticks_ms(), self._reset_by) > 0
        ):
            self.reboot()

    def run(self) -> None:
        """Start, then loop until KeyboardInterrupt (a clean stop) or a reset."""
        try:
            self.start()
            while True:
                self.loop_once()
        except KeyboardInterrupt:
            self.shutdown()

    def reboot(self) -> None:
        """Note why, say offline (reason reboot), disconnect, reset the board."""
        config.write_json(self._state("note.json"), self.reset_note)
        log("I", "rebooting: %s", self.reset_note)
        self._goodbye("reboot")
        self.hal.reset()

    def shutdown(self) -> None:
        """Say offline (the broker drops the will on DISCONNECT), then disconnect."""
        log("I", "stopping")
        self._goodbye("stopped")
        log("I", "stopped")


def main(config_path: str, app_root: str = "") -> int:
    """Entry point: returns a process exit code (2 when the node cannot start)."""
    link.seed_random()
    try:
        cfg = load_config_file(config_path)
        gc.collect()  # each step leaves garbage; collected, the next one finds room
        board = hal.make_hal(cfg)
        gc.collect()
        ctx = tls_context(cfg)
        node = Node(cfg, board, ctx, app_root=app_root)
        gc.collect()
    except (OSError, ValueError, ConfigError, hal.HALError, ring.RingError) as exc:
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
    node.run()
    return 0
