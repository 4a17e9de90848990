# Cases for the shape bounds of firmware/contract.py (issue 15), run by pytest under
# CPython and by tests/mp/run.py under MicroPython: whatever bytes arrive, decode returns a
# message or raises ProtocolError, nothing else; and the corpus of hostile inputs kept in
# tests/corpus/contract/ (one file each: the topic, a newline, the payload bytes) is
# replayed under both interpreters. contract_cases.py takes these cases in, so they run in
# the contract's own MicroPython process (one compile of the tree, not two).

import os

try:  # noqa: SIM105 - CPython (pytest) tells the MicroPython process where the corpus is
    os.environ.setdefault("CAMFLEET_CORPUS", __file__.rsplit("/", 2)[0] + "/corpus/contract")
except AttributeError:  # MicroPython's os has no environ: it reads what pytest set
    pass

from firmware import contract
from tests.mp.checks import rejects

C = contract
DEV = "node-0001"
HB_TOPIC = "camfleet/v1/node-0001/heartbeat"
_HB = (
    '{"v": 1, "id": "node-0001", "ts": 1767225600.5, "seq": 1, "kind": "node", '
    '"interval_s": 60, "uptime_s": 1.5'
)
# under MicroPython these decode (its json keeps a lone surrogate as bytes, reads a BOM or
# NaN its own way); what matters there is that nothing but ProtocolError escapes
_MP_LENIENT = (
    "lone-surrogate.bin",
    "lone-surrogate-key.bin",
    "utf8-bom.bin",
    "overlong-utf8.bin",
)


def _is_micropython():
    import sys

    return sys.implementation.name == "micropython"


def _hb_with(extra):
    return (_HB + ", " + extra + "}").encode()


def _outcome(topic, payload):
    """ "ok" or the refusal reason; any other exception propagates (a failed case)."""
    try:
        C.decode(topic, payload)
    except C.ProtocolError as exc:
        return exc.reason
    return "ok"


def test_deep_nesting_is_a_refusal_not_a_crash():
    for n in (20, 100, 1000, 4000):
        rejects(C.R_SHAPE, C.decode, HB_TOPIC, ("[" * n + "]" * n).encode())
    rejects(C.R_SHAPE, C.decode, HB_TOPIC, _hb_with('"hardware": ' + "[" * 3000 + "]" * 3000))


def test_depth_bound_is_exact():
    # the payload is depth 1, "hardware" 2, its lists 3 and on
    inner = "[" * (C.MAX_DEPTH - 1) + "1" + "]" * (C.MAX_DEPTH - 1)
    assert _outcome(HB_TOPIC, _hb_with('"hardware": {"a": ' + inner + "}")) == C.R_SHAPE
    inner = "[" * (C.MAX_DEPTH - 2) + "1" + "]" * (C.MAX_DEPTH - 2)
    assert _outcome(HB_TOPIC, _hb_with('"hardware": {"a": ' + inner + "}")) == "ok"


def test_too_many_values():
    many = ", ".join(["0"] * (C.MAX_ITEMS + 1))
    topic = "camfleet/v1/node-0001/event"
    body = '{"v": 1, "id": "node-0001", "ts": 1.0, "seq": 1, "event_id": "e", "type": "t", '
    assert _outcome(topic, (body + '"data": {"x": [' + many + "]}}").encode()) == C.R_SHAPE


def test_numbers_that_do_not_fit():
    assert _outcome(HB_TOPIC, _hb_with('"mem_free": ' + "9" * 30)) == C.R_SHAPE
    assert _outcome(HB_TOPIC, _hb_with('"x": -' + "9" * 30)) == C.R_SHAPE
    assert _outcome(HB_TOPIC, _hb_with('"cpu_pct": 1e999')) in (C.R_SHAPE, C.R_SCHEMA)
    assert _outcome(HB_TOPIC, _hb_with('"x": [1e999]')) == C.R_SHAPE
    assert _outcome(HB_TOPIC, _hb_with('"x": 9223372036854775807')) == "ok"


def test_invalid_utf8_is_bad_json():
    rejects(C.R_JSON, C.decode, HB_TOPIC, _hb_with('"camera": "')[:-2] + b'\xff\xfe"}')


def test_shape_problem_on_values():
    assert C.shape_problem({"a": [1, 2, {"b": "c"}]}) == ""
    assert C.shape_problem(5) == ""
    deep = 1
    for _ in range(C.MAX_DEPTH):
        deep = [deep]
    assert C.shape_problem({"a": deep}) != ""


def _corpus():
    root = os.getenv("CAMFLEET_CORPUS")
    assert root, "CAMFLEET_CORPUS not set"
    for name in sorted(os.listdir(root)):
        with open(root + "/" + name, "rb") as f:
            data = f.read()
        cut = data.find(b"\n")
        yield name, data[:cut].decode(), data[cut + 1 :]


def test_corpus_replays():
    lenient = _is_micropython()
    seen = 0
    for name, topic, payload in _corpus():
        got = _outcome(topic, payload)
        seen += 1
        if name.startswith("valid-"):
            assert got == "ok", name + ": " + got
        elif not (lenient and name in _MP_LENIENT):
            assert got != "ok", name + " accepted"
    assert seen >= 20, seen


def test_fuzz_loop_mutations():
    # a bounded random walk over mutations of a valid heartbeat: bytes flipped, cut,
    # repeated, brackets inserted; every outcome is a message or a ProtocolError
    import random

    random.seed(15)
    base = _hb_with('"versions": {"fw": "0.1.0"}, "scene": ["ok"]')
    specials = (b"[", b"{", b"]", b"}", b'"', b"\\", b"\\u", b"1e999", b"9" * 25, b"\xff", b",")
    refused = 0
    for _ in range(300):
        data = base
        for _m in range(random.getrandbits(3) + 1):
            pos = random.getrandbits(16) % (len(data) + 1)
            op = random.getrandbits(2)
            if op == 0:
                data = data[:pos] + bytes([random.getrandbits(8)]) + data[pos + 1 :]
            elif op == 1:
                s = specials[random.getrandbits(4) % len(specials)]
                data = data[:pos] + s * (1 + random.getrandbits(6)) + data[pos:]
            elif op == 2:
                data = data[:pos] + data[pos + random.getrandbits(4) :]
            else:
                data = data[:pos] + data[pos : pos + random.getrandbits(5)] + data[pos:]
        if _outcome(HB_TOPIC, data) != "ok":
            refused += 1
    assert refused > 100, refused
