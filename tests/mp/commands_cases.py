# Cases for command checking (firmware/commands.py), under CPython and MicroPython.

from firmware import commands
from tests.mp.checks import raises

NOW = 1767225600.0


def _req(cmd, args=None, **extra):
    body = {"v": 1, "id": "node-0001", "ts": NOW, "cid": "c-1", "cmd": cmd}
    if args is not None:
        body["args"] = args
    for key, value in extra.items():
        body[key] = value
    return body


def _refused(reason, body, detail=""):
    exc = raises(commands.CommandError, commands.check, body, NOW)
    assert exc.reason == reason, (exc.reason, reason)
    assert detail in str(exc), (detail, str(exc))
    assert str(exc).startswith(reason + ": ")


def test_known_commands_pass():
    assert commands.check(_req("ping"), NOW) == ("ping", {})
    assert commands.check(_req("reboot", {}), NOW) == ("reboot", {})
    assert commands.check(_req("read_sensors"), NOW) == ("read_sensors", {})
    for action in ("on", "off", "cycle"):
        assert commands.check(_req("relay", {"action": action}), NOW)[1] == {"action": action}
    got = commands.check(_req("relay", {"action": "cycle", "off_s": 2.5}), NOW)
    assert got == ("relay", {"action": "cycle", "off_s": 2.5})
    assert commands.check(_req("ping", deadline=NOW + 1), NOW)[0] == "ping"


def test_bad_commands_refused_with_a_reason():
    _refused(commands.UNKNOWN, _req("selfdestruct"), "'selfdestruct' (known: ping, read_sensors")
    _refused(commands.EXPIRED, _req("reboot", deadline=NOW - 10), "passed 10.0 s ago")
    _refused(commands.BAD_ARGS, _req("ping", {"x": 1}), "ping takes no arg 'x'")
    _refused(commands.BAD_ARGS, _req("relay", {}), "relay needs arg 'action'")
    _refused(commands.BAD_ARGS, _req("relay", {"action": "explode"}), "one of on, off, cycle")
    _refused(commands.BAD_ARGS, _req("relay", {"action": 1}), "'action' must be str")
    _refused(commands.BAD_ARGS, _req("relay", {"action": "cycle", "off_s": 0.1}), "0.5..600")
    _refused(commands.BAD_ARGS, _req("relay", {"action": "cycle", "off_s": True}), "must be num")
    _refused(commands.BAD_ARGS, _req("relay", {"action": "on", "off_s": 2}), "only with action")


def test_answers():
    assert commands.answer("c-1", {"pong": True}) == {
        "cid": "c-1",
        "ok": True,
        "result": {"pong": True},
    }
    assert commands.answer("c-2", None) == {"cid": "c-2", "ok": True, "result": {}}
    refused = commands.answer("c-3", None, "bad_args: " + "x" * 500)
    assert refused["ok"] is False and len(refused["error"]) == 200 and "result" not in refused


def test_salvage_cid_only_from_usable_payloads():
    assert commands.salvage_cid(b'{"cid": "c-9", "cmd": 5}') == "c-9"
    assert commands.salvage_cid(b'{"cid": 9}') is None
    assert commands.salvage_cid(b'{"cid": ""}') is None
    assert commands.salvage_cid(b'{"cid": "' + b"c" * 65 + b'"}') is None
    assert commands.salvage_cid(b"[1, 2]") is None
    assert commands.salvage_cid(b"\xff{") is None


def test_recent_answers_are_remembered_and_bounded():
    recent = commands.Recent()
    for i in range(20):
        recent.add(f"c-{i}", {"cid": f"c-{i}"})
    assert recent.get("c-19") == {"cid": "c-19"}
    assert recent.get("c-12") == {"cid": "c-12"} and recent.get("c-11") is None
