# camfleet wire contract: topics, payloads, limits, protocol version.
#
# This one module is the contract every part speaks: the MicroPython node runs it as is,
# the agent and the fleet server import it as ``firmware.contract``. It therefore stays in
# the subset MicroPython runs: no typing, dataclasses or enum at run time, only json and
# plain dicts. docs/protocol.md describes the same contract for people.
#
# Functions raise ProtocolError(reason, detail). ``reason`` is one of the R_* constants
# (used as a metric label); ``detail`` says what was wrong, for the log.

import json

TYPE_CHECKING = False  # type checkers take it as True (MicroPython has no typing module)
if TYPE_CHECKING:
    from firmware import schema
else:
    try:
        import schema
    except ImportError:  # CPython: the firmware is the package ``firmware``
        from firmware import schema

try:  # only for type checkers; MicroPython never evaluates annotations
    from typing import Any
except ImportError:
    pass
# pyright: reportPossiblyUnboundVariable=false

PROTOCOL_VERSION = 1
TOPIC_ROOT = "camfleet/v1"
# Shared-subscription group the fleet server workers join (MQTT v5).
SERVER_SHARE_GROUP = "fleet-ingest"
# Certificate CN of the fleet server. "_" is not allowed in device ids, so no device
# certificate can ever carry this identity.
SERVER_IDENTITY = "_fleet-server"
# Where the fleet server publishes alert changes (QoS 1) for operators' tools. "_server" is
# not a device id, so no device can read or write it.
ALERTS_TOPIC = TOPIC_ROOT + "/_server/alerts"

# Largest payload the broker accepts at all (mosquitto message_size_limit).
MAX_MESSAGE = 262144

# Directions
UP = "up"  # device -> server
DOWN = "down"  # server -> device

# Message kinds: name -> (topic suffix, direction, qos, retain, max payload bytes)
KINDS = {
    "status": ("status", UP, 1, True, 1024),
    "heartbeat": ("heartbeat", UP, 1, False, 8192),
    "event": ("event", UP, 1, False, 65536),
    "cmd_res": ("cmd/res", UP, 1, False, 65536),
    "config_reported": ("config/reported", UP, 1, True, 4096),
    "cmd_req": ("cmd/req", DOWN, 1, False, 8192),
    "config_desired": ("config/desired", DOWN, 1, True, 16384),
    # OTA (issue 6): the release a campaign wants on this device, and how its install goes
    "update_desired": ("update/desired", DOWN, 1, True, 4096),
    "update_state": ("update/state", UP, 1, False, 4096),
    # receipts (issue 14): which of the device's events the server's database now holds
    "receipt": ("receipt", DOWN, 1, False, 4096),
}

_SUFFIX_TO_KIND = {}
for _k in KINDS:
    _SUFFIX_TO_KIND[KINDS[_k][0]] = _k

DEVICE_KINDS = schema.DEVICE_KINDS
STATUS_STATES = schema.STATUS_STATES
ARTIFACTS = schema.ARTIFACTS
UPDATE_STATES = schema.UPDATE_STATES

# Rejection reasons (metric labels).
R_TOPIC = "bad_topic"
R_SIZE = "oversized"
R_JSON = "bad_json"
R_VERSION = "bad_version"
R_IDENTITY = "identity_mismatch"
R_SCHEMA = "bad_schema"
R_SHAPE = "bad_shape"  # nested too deep, too many values, a number or string not storable
REASONS = (R_TOPIC, R_SIZE, R_JSON, R_VERSION, R_IDENTITY, R_SCHEMA, R_SHAPE)

# Bounds on the shape of every payload, checked right after parsing, before anything looks
# inside: containers nested at most MAX_DEPTH deep (the payload object is depth 1), at most
# MAX_ITEMS values in all its containers together, integers within +-MAX_INT (a signed
# 64-bit column holds them), floats finite, strings valid Unicode (no lone surrogates)
# without NUL.
MAX_DEPTH = 16
MAX_ITEMS = 4096
MAX_INT = 2**63 - 1

# Device ids: 3..64 chars of [a-z0-9-], starting and ending with a letter or digit.
ID_MIN = 3
ID_MAX = 64
_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"


class ProtocolError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason + ": " + detail)
        self.reason = reason
        self.detail = detail


def valid_device_id(device_id: object) -> bool:
    if not isinstance(device_id, str):
        return False
    n = len(device_id)
    if n < ID_MIN or n > ID_MAX:
        return False
    if device_id.strip(_ID_CHARS):  # what is left is a character not allowed (C speed)
        return False
    return device_id[0] != "-" and device_id[-1] != "-"


def check_device_id(device_id: str) -> str:
    if not valid_device_id(device_id):
        raise ProtocolError(R_IDENTITY, "invalid device id %r" % (device_id,))
    return device_id


# ---------------------------------------------------------------- topics


def topic(device_id: str, kind: str) -> str:
    """The topic a message of ``kind`` for ``device_id`` travels on."""
    check_device_id(device_id)
    if kind not in KINDS:
        raise ProtocolError(R_TOPIC, "unknown kind %r" % (kind,))
    return TOPIC_ROOT + "/" + device_id + "/" + KINDS[kind][0]


def parse_topic(topic_name: str) -> tuple[str, str]:
    """Split a topic into (device_id, kind); ProtocolError when it is not ours."""
    if not isinstance(topic_name, str) or not topic_name.startswith(TOPIC_ROOT + "/"):
        raise ProtocolError(R_TOPIC, "not under %s" % TOPIC_ROOT)
    rest = topic_name[len(TOPIC_ROOT) + 1 :]
    slash = rest.find("/")
    if slash < 0:
        raise ProtocolError(R_TOPIC, "no kind in topic")
    device_id = rest[:slash]
    kind = _SUFFIX_TO_KIND.get(rest[slash + 1 :])
    if kind is None:
        raise ProtocolError(R_TOPIC, "unknown topic suffix %r" % (rest[slash + 1 :],))
    if not valid_device_id(device_id):
        raise ProtocolError(R_TOPIC, "invalid device id in topic")
    return device_id, kind


def server_subscriptions(shared: bool = True) -> list[tuple[str, int]]:
    """Topic filters the fleet server subscribes to: every up-kind of every device."""
    out = []
    for spec in KINDS.values():
        suffix, direction, qos, _retain, _max = spec
        if direction != UP:
            continue
        filt = TOPIC_ROOT + "/+/" + suffix
        if shared:
            filt = "$share/" + SERVER_SHARE_GROUP + "/" + filt
        out.append((filt, qos))
    return out


def device_acl_patterns() -> list[tuple[str, str]]:
    """(access, pattern) pairs for a mosquitto ACL file; %u is the certificate CN."""
    out = []
    for spec in KINDS.values():
        suffix, direction, _q, _r, _m = spec
        access = "write" if direction == UP else "read"
        out.append((access, TOPIC_ROOT + "/%u/" + suffix))
    return out


# The payload schemas live in schema.py; these names are the contract's public surface.
SCHEMAS = schema.SCHEMAS
type_ok = schema.type_ok


def validate(kind: str, body: object) -> dict[str, Any]:
    """Check a decoded payload dict of ``kind``; returns it or raises ProtocolError."""
    if kind not in SCHEMAS:
        raise ProtocolError(R_TOPIC, "unknown kind %r" % (kind,))
    if not isinstance(body, dict):
        raise ProtocolError(R_SCHEMA, "payload must be a JSON object")
    if "v" in body and body["v"] != PROTOCOL_VERSION:
        raise ProtocolError(R_VERSION, "protocol version %r not supported" % (body["v"],))
    problem = schema.problem(kind, body, schema.COMMON) or schema.problem(kind, body, SCHEMAS[kind])
    if problem:
        raise ProtocolError(R_SCHEMA, problem)
    if not valid_device_id(body["id"]):
        raise ProtocolError(R_IDENTITY, "invalid device id in payload")
    return body


# ---------------------------------------------------------------- shape


def _bad_string(text: str) -> bool:
    if "\x00" in text:  # PostgreSQL's text and jsonb refuse NUL
        return True
    try:
        text.encode()  # CPython: a lone surrogate (from a \\ud800 escape) does not encode
    except UnicodeError:
        return True
    return False


def shape_problem(body: object, check_strings: bool = True) -> str:
    """What makes a parsed payload unstorable or too costly to look at, or "".

    Iterative (no recursion, whatever the depth): MicroPython's stack is small.
    ``check_strings``: look for lone surrogates too; only a payload with a backslash-u
    escape can hold one, so the caller passes whether it has one.
    """
    if type(body) is not dict and type(body) is not list:
        return ""  # a scalar: validate() says it is not an object
    stack = [(body, 1)]
    items = 0
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return "nested deeper than %d" % MAX_DEPTH
        items += len(value)
        if items > MAX_ITEMS:
            return "more than %d values" % MAX_ITEMS
        children = value
        if type(value) is dict:
            if check_strings:
                for key in value:
                    if _bad_string(key):
                        return "a key is not valid Unicode"
            children = list(value.values())
        for child in children:
            t = type(child)
            if t is str:
                if check_strings and _bad_string(child):
                    return "a string is not valid Unicode"
            elif t is int:
                if not -MAX_INT <= child <= MAX_INT:
                    return "an integer out of the 64-bit range"
            elif t is float:
                if child - child != 0:  # NaN and the infinities
                    return "a number that is not finite"
            elif t is dict or t is list:
                stack.append((child, depth + 1))
    return ""


# ---------------------------------------------------------------- encode / decode


def encode(
    kind: str, device_id: str, body: dict[str, Any], ts: float
) -> tuple[str, bytes, int, bool]:
    """Complete, validate and serialise a payload. Returns (topic, bytes, qos, retain)."""
    msg = {}
    for key, value in body.items():
        msg[key] = value
    msg["v"] = PROTOCOL_VERSION
    msg["id"] = device_id
    msg["ts"] = ts
    validate(kind, msg)
    data = json.dumps(msg).encode()
    _suffix, _d, qos, retain, limit = KINDS[kind]
    if len(data) > limit:
        raise ProtocolError(R_SIZE, "%s payload is %d bytes, limit %d" % (kind, len(data), limit))
    return topic(device_id, kind), data, qos, retain


def decode(topic_name: str, payload: bytes | bytearray | str) -> tuple[str, str, dict[str, Any]]:
    """Parse and validate a received message. Returns (device_id, kind, body).

    Checks in order: topic, size (before parsing), JSON, protocol version, schema, and that
    the id in the payload is the device id in the topic (the broker's ACL already ties the
    topic to the sender's certificate).
    """
    device_id, kind = parse_topic(topic_name)
    limit = KINDS[kind][4]
    if len(payload) > limit:
        detail = "%s payload is %d bytes, limit %d" % (kind, len(payload), limit)
        raise ProtocolError(R_SIZE, detail)
    if len(payload) == 0 and kind == "status":
        # an empty retained message clears a status; treat as a schema error for ingest
        raise ProtocolError(R_SCHEMA, "empty payload")
    try:
        if isinstance(payload, (bytes, bytearray, memoryview)):
            payload = bytes(payload).decode()
        body = json.loads(payload)
    except (ValueError, UnicodeError) as exc:
        raise ProtocolError(R_JSON, "not JSON: %s" % (exc,))  # noqa: B904 - MicroPython warns on "from"
    except (RuntimeError, MemoryError):
        # CPython: RecursionError (a RuntimeError) on deep nesting; MicroPython's parser
        # runs out of memory instead. Either way the payload's shape is the problem.
        raise ProtocolError(R_SHAPE, "nested too deep or too large to parse")  # noqa: B904
    problem = shape_problem(body, "\\u" in payload)
    if problem:
        raise ProtocolError(R_SHAPE, problem)
    validate(kind, body)
    if body["id"] != device_id:
        raise ProtocolError(R_IDENTITY, "payload id %r on topic of %r" % (body["id"], device_id))
    return device_id, kind, body


# ---------------------------------------------------------------- reconnect policy


# Longest wait between two reconnect attempts: with it, every device is back within a
# minute of the network's return (the first retry's spread and a connect timeout included).
RECONNECT_CAP_S = 30.0


def reconnect_delay(
    attempt: int,
    rnd: float,
    base: float = 1.0,
    cap: float = RECONNECT_CAP_S,
    first_spread: float = 20.0,
) -> float:
    """Seconds to wait before reconnect ``attempt`` (0 = the first retry after a loss).

    Full jitter (a uniform draw in [0, min(cap, base * 2**attempt))), except the first retry,
    which is spread uniformly over ``first_spread`` seconds: after a broker restart plain
    full jitter still arrives as a burst, spreading the first retry keeps the broker's TLS
    handshakes under its ceiling. ``rnd`` is a number in [0, 1) from the caller's RNG.
    """
    if attempt <= 0:
        return rnd * first_spread
    ceiling = min(cap, base * float(1 << min(attempt, 30)))
    return rnd * ceiling


# ---------------------------------------------------------------- receipts (issue 14)

# Most ranges in one receipt message; a batch holding more for one device sends several.
RECEIPT_MAX_RANGES = 64
SEQ_MAX = 2**53


def receipt_ranges(body: dict[str, Any], epoch: str, next_seq: int) -> list[list[int]]:
    """The ranges of a decoded receipt a device may act on, or ProtocolError.

    A receipt for another stream (``epoch``), with a malformed range, with more than
    RECEIPT_MAX_RANGES ranges, or naming a sequence number the device never gave out
    (>= ``next_seq``) is refused whole: nothing of it may delete anything.
    """
    if body.get("epoch", "") != epoch:
        raise ProtocolError(R_SCHEMA, "receipt for another event stream")
    ranges = body["ranges"]
    if len(ranges) > RECEIPT_MAX_RANGES:
        raise ProtocolError(R_SCHEMA, "receipt has too many ranges")
    out = []
    for r in ranges:
        if not isinstance(r, list) or len(r) != 2:
            raise ProtocolError(R_SCHEMA, "receipt range must be [lo, hi]")
        lo = r[0]
        hi = r[1]
        if not type_ok(lo, "int") or not type_ok(hi, "int") or lo < 0 or hi < lo:
            raise ProtocolError(R_SCHEMA, "receipt range must be 0 <= lo <= hi")
        if hi >= next_seq:
            raise ProtocolError(R_SCHEMA, "receipt names events never sent")
        out.append([lo, hi])
    return out
