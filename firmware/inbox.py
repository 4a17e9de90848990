# Messages in: commands (cmd/req) answered on cmd/res, desired config (config/desired)
# checked, applied and reported, the paired box's heartbeats handed to the supervisor.
# A mixin of node.Node; replies are queued and sent by the link outside the handler.

try:
    import clock
    import commands
    import config
    import contract
    import link
    import version
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import clock, commands, config, contract, link, version

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_REBOOT_WAIT_MS = 30000  # a requested reboot waits this long at most for its reply to go
log = clock.log


class Inbox(link.NodeState):
    reply: "Any"
    on_receipt: "Any"
    ota_msg: "Any"
    _box_wanted: "Any"

    def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        try:
            if topic == self._box_topic:
                self._on_box(topic, payload)
                return
            if not payload and topic.endswith("/update/desired"):
                return  # the server cleared its request (an empty retained message)
            try:
                _device, kind, body = contract.decode(topic, payload)
            except contract.ProtocolError as exc:
                self._refuse(topic, payload, exc)
                return
            self.received += 1
            if kind == "cmd_req":
                self.on_command(body)
            elif kind == "config_desired":
                self.on_config(body)
            elif kind == "update_desired":
                self.ota_msg = body  # for trial.py and updater.py, after a heartbeat
            elif kind == "receipt":
                self.on_receipt(body)
        except (OSError, ValueError, TypeError, KeyError, MemoryError) as exc:
            self.rejected += 1
            log("E", "message on %s not handled: %s: %s", topic, type(exc).__name__, exc)

    def on_oversized(self, topic: str, size: int) -> None:
        self.rejected += 1
        log("W", "rejected message on %s: %d bytes, over max_packet", topic, size)

    def _on_box(self, topic: str, payload: bytes) -> None:
        try:
            _device, kind, _body = contract.decode(topic, payload)
        except contract.ProtocolError as exc:
            self.rejected += 1
            log("W", "box heartbeat refused: %s", exc)
            return
        if kind == "heartbeat":
            self.box.heard(clock.ticks_ms())

    def _refuse(self, topic: str, payload: bytes, exc: contract.ProtocolError) -> None:
        self.rejected += 1
        log("W", "rejected message on %s: %s", topic, exc)
        if topic == self._own + "cmd/req":
            cid = commands.salvage_cid(payload)
            if cid is not None:
                self.reply(
                    "cmd_res", commands.answer(cid, None, commands.BAD_REQUEST + ": " + str(exc))
                )

    def on_command(self, body: "dict[str, Any]") -> None:
        cid = body["cid"]
        res = self.recent.get(cid)
        if res is not None:
            log("I", "command %s seen before: same answer", cid)
            self.reply("cmd_res", res)
            return
        try:
            name, args = commands.check(body, clock.unix_time())
            res = commands.answer(cid, getattr(self, "cmd_" + name)(cid, args))
        except commands.CommandError as exc:
            res = commands.answer(cid, None, str(exc))
        log("I", "command %s %s: %s", cid, body["cmd"], "ok" if res["ok"] else res["error"])
        self.recent.add(cid, res)
        self.reply("cmd_res", res)

    def on_config(self, body: "dict[str, Any]") -> None:
        ver = body["version"]
        if ver < self.version:
            log("W", "desired config %d is older than the applied %d: kept", ver, self.version)
            self.reply("config_reported", {"version": self.version, "ok": True})
            return
        try:
            new = config.desired_settings(self.boot_settings, body["config"], self.device_id)
        except config.ConfigError as exc:
            log("W", "desired config %d refused: %s", ver, exc)
            self.reply("config_reported", {"version": ver, "ok": False, "error": str(exc)})
            return
        if ver != self.version or new != self.settings:
            config.write_json(
                self._state("desired.json"), {"version": ver, "config": body["config"]}
            )
            self.apply(new)
            self.version = ver
            log("I", "desired config %d applied", ver)
        self.reply("config_reported", {"version": ver, "ok": True})

    def apply(self, settings: "dict[str, Any]") -> None:
        self.settings = settings
        self.heartbeat.interval_ms = link.ms(settings["heartbeat_s"])
        self.sensors.interval_ms = link.ms(settings["sensor_s"])
        self.box.configure(settings, clock.ticks_ms())
        self.cabinet.configure(settings)

    # ------------------------------------------------------------ commands

    def cmd_ping(self, cid: str, args: "dict[str, Any]") -> "dict[str, Any]":
        return {"pong": True, "uptime_s": self.uptime.ms / 1000, "firmware": version.VERSION}

    def cmd_reboot(self, cid: str, args: "dict[str, Any]") -> "dict[str, Any]":
        self.reset_note = {"note": "command reboot", "cid": cid}
        self._reset_by = clock.ticks_add(clock.ticks_ms(), _REBOOT_WAIT_MS)
        return {"rebooting": True}

    def cmd_relay(self, cid: str, args: "dict[str, Any]") -> "dict[str, Any]":
        action = args["action"]
        off_s = args.get("off_s", self.settings["box_off_s"])
        for kind, data in self.box.command(action, off_s, clock.ticks_ms()):
            data["cid"] = cid
            self.event(kind, data)
        self.hal.set_relay(self.box.relay)
        return {"power": "off" if self.box.relay else "on", "state": self.box.state}

    def cmd_read_sensors(self, cid: str, args: "dict[str, Any]") -> "dict[str, Any]":
        b = self.hal
        found = {
            "relay": b.relay(),
            "box_line": b.box_line(),
            "box_state": self.box.state,
            "mcu_temp_c": b.temperature_c(),
            "rssi": b.rssi(),
            "outbox": self.ring.pending(),
        }
        for key, value in self.readings.items():
            found[key] = value
        out = {}
        for key, value in found.items():
            if value is not None:
                out[key] = value
        return out
