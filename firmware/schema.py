# Payload schemas of the wire contract (contract.py): the fields of every message kind,
# their types, ranges and allowed values. Like contract.py it runs on MicroPython and
# CPython alike (no typing, dataclasses or enum at run time); docs/protocol.md describes the
# same tables for people (tests/test_protocol_doc.py keeps them equal).

import math

try:  # only for type checkers; MicroPython never evaluates annotations
    from typing import Any
except ImportError:
    pass
# pyright: reportPossiblyUnboundVariable=false

# Values some fields must take (the contract names them too).
DEVICE_KINDS = ("agent", "node")
STATUS_STATES = ("online", "offline")
# What an update installs: the agent application, the detector model bundle (both on the
# Linux box), the node firmware.
ARTIFACTS = ("agent", "model", "firmware")
# States a device reports for one update, in the order they normally come. "pending" and
# "skipped" are the server's own (not yet asked; left out by a campaign).
UPDATE_STATES = ("downloading", "installing", "trial", "committed", "rolled_back", "failed")

# field -> (type, required). Types: str, int, num (int or float), bool, dict, list.
# Unknown fields are ignored (additive changes stay within a major version), but a known
# field must have its type and range.

_T_STR = "str"
_T_INT = "int"
_T_NUM = "num"
_T_BOOL = "bool"
_T_DICT = "dict"
_T_LIST = "list"

COMMON = {"v": (_T_INT, True), "id": (_T_STR, True), "ts": (_T_NUM, True)}

SCHEMAS = {
    "status": {
        "state": (_T_STR, True),
        "kind": (_T_STR, True),
        "reason": (_T_STR, False),
    },
    "heartbeat": {
        "seq": (_T_INT, True),
        "kind": (_T_STR, True),
        "interval_s": (_T_NUM, True),
        "uptime_s": (_T_NUM, True),
        "versions": (_T_DICT, False),
        "hardware": (_T_DICT, False),
        "cpu_pct": (_T_NUM, False),
        "load1": (_T_NUM, False),
        "mem_used_pct": (_T_NUM, False),
        "mem_free": (_T_INT, False),
        "disk_used_pct": (_T_NUM, False),
        "temp_c": (_T_NUM, False),
        "rssi": (_T_INT, False),
        "reset_cause": (_T_STR, False),
        "fps": (_T_NUM, False),
        "frames": (_T_INT, False),
        "camera": (_T_STR, False),
        "outbox": (_T_INT, False),
        # detection pipeline and scene health (agent)
        "outbox_dropped": (_T_INT, False),
        # receipts (issue 14): sent and not yet receipted; refused at the source (disk full)
        "outbox_unreceipted": (_T_INT, False),
        "outbox_refused": (_T_INT, False),
        "scene": (_T_LIST, False),
        "brightness": (_T_NUM, False),
        "sharpness": (_T_NUM, False),
        "infer_ms": (_T_NUM, False),
        "invokes": (_T_INT, False),
        "light": (_T_STR, False),
        "unreliable": (_T_LIST, False),
    },
    "event": {
        "seq": (_T_INT, True),
        "event_id": (_T_STR, True),
        "type": (_T_STR, True),
        "data": (_T_DICT, False),
        # the device's event stream (issue 14): present when the device speaks receipts
        "epoch": (_T_STR, False),
    },
    "cmd_req": {
        "cid": (_T_STR, True),
        "cmd": (_T_STR, True),
        "args": (_T_DICT, False),
        "deadline": (_T_NUM, False),
    },
    "cmd_res": {
        "cid": (_T_STR, True),
        "ok": (_T_BOOL, True),
        "result": (_T_DICT, False),
        "error": (_T_STR, False),
    },
    "config_desired": {
        "version": (_T_INT, True),
        "config": (_T_DICT, True),
    },
    "config_reported": {
        "version": (_T_INT, True),
        "ok": (_T_BOOL, True),
        "error": (_T_STR, False),
    },
    "update_desired": {
        "campaign": (_T_STR, True),
        "artifact": (_T_STR, True),
        "release": (_T_STR, True),
        "target": (_T_STR, True),
        "allow_downgrade": (_T_BOOL, False),
        "trial_s": (_T_NUM, False),
    },
    "update_state": {
        "campaign": (_T_STR, True),
        "artifact": (_T_STR, True),
        "release": (_T_STR, True),
        "state": (_T_STR, True),
        "running": (_T_STR, False),
        "progress": (_T_NUM, False),
        "attempt": (_T_INT, False),
        "error": (_T_STR, False),
    },
    "receipt": {
        "epoch": (_T_STR, False),
        "ranges": (_T_LIST, True),
    },
}

# Percentages and other bounded numbers: field -> (min, max)
_RANGES = {
    "cpu_pct": (0, 100),
    "mem_used_pct": (0, 100),
    "disk_used_pct": (0, 100),
    "temp_c": (-60, 150),
    "interval_s": (1, 86400),
    "uptime_s": (0, 10**10),
    "seq": (0, 2**53),
    "ts": (0, 2**33),
    "version": (0, 2**31),
    "fps": (0, 1000),
    "load1": (0, 10**4),
    "brightness": (0, 255),
    "sharpness": (0, 10**9),
    "infer_ms": (0, 10**6),
    "progress": (0, 100),
    "trial_s": (1, 86400),
    "attempt": (0, 1000),
    "outbox_unreceipted": (0, 2**53),
    "outbox_refused": (0, 2**53),
}
_ENUMS = {
    ("status", "state"): STATUS_STATES,
    ("status", "kind"): DEVICE_KINDS,
    ("heartbeat", "kind"): DEVICE_KINDS,
    ("update_desired", "artifact"): ARTIFACTS,
    ("update_state", "artifact"): ARTIFACTS,
    ("update_state", "state"): UPDATE_STATES,
}
_MAX_STR = 256


def type_ok(value: object, want: str) -> bool:
    """Whether ``value`` is of wire type ``want`` (str, int, num, bool, dict, list)."""
    if want == _T_STR:
        return isinstance(value, str)
    if isinstance(value, bool):
        return want == _T_BOOL
    if want == _T_INT:
        return isinstance(value, int)
    if want == _T_NUM:
        if isinstance(value, int):
            return True
        # NaN and infinities are not numbers on this wire
        return isinstance(value, float) and math.isfinite(value)
    if want == _T_DICT:
        return isinstance(value, dict)
    if want == _T_LIST:
        return isinstance(value, list)
    return False


def problem(kind: str, body: dict[str, Any], fields: dict[str, tuple[str, bool]]) -> str:
    """What is wrong with ``body``'s ``fields`` (a missing required field, a wrong type,
    range or value), or "" when nothing is."""
    for name, spec in fields.items():
        want, required = spec
        if name not in body:
            if required:
                return "%s: missing field %r" % (kind, name)
            continue
        value = body[name]
        if not type_ok(value, want):
            return "%s: field %r must be %s" % (kind, name, want)
        if want == _T_STR and len(value) > _MAX_STR and name != "error":
            return "%s: field %r too long" % (kind, name)
        rng = _RANGES.get(name)
        if rng is not None and (value < rng[0] or value > rng[1]):
            return "%s: field %r out of range" % (kind, name)
        allowed = _ENUMS.get((kind, name))
        if allowed is not None and value not in allowed:
            return "%s: field %r not one of %s" % (kind, name, allowed)
    return ""
