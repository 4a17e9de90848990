"""Property-based fuzzing (hypothesis) of the contract's decoder and of the server's whole
per-message path: gate, decode, store (SQLite), dead letters (issue 15).

Properties: whatever bytes a device sends, the decoder returns a message or raises
``ProtocolError``; the gate never raises; an accepted message is stored or set aside, never
lost in an exception, and an honest message right after it is stored. The corpus of
hostile inputs (tests/corpus/contract/) goes through the same server path. The MicroPython
side of the fuzzing is tests/mp/shape_cases.py (a bounded mutation loop under the real
interpreter).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import contract
from fleet_server.db import Heartbeat, make_engine, make_sessionmaker
from fleet_server.ingest import gate
from fleet_server.ingest.deadletter import DeadLetter
from fleet_server.ingest.events import Event
from fleet_server.ingest.registry import Accepted, Registry
from fleet_server.ingest.safestore import SafeStore
from fleet_server.metrics import Metrics
from fleet_server.migrate import upgrade

CORPUS = Path(__file__).resolve().parent / "corpus" / "contract"
DEV = "fuzz-01"
KINDS = [k for k, spec in contract.KINDS.items() if spec[1] == contract.UP]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=5),
    max_leaves=40,
)  # fmt: skip


def _base(kind: str) -> dict[str, Any]:
    bodies: dict[str, dict[str, Any]] = {
        "status": {"state": "online", "kind": "agent"},
        "heartbeat": {"seq": 1, "kind": "agent", "interval_s": 30, "uptime_s": 1.0},
        "event": {"seq": 1, "event_id": "e-1", "type": "t", "data": {}},
        "cmd_res": {"cid": "c-1", "ok": True},
        "config_reported": {"version": 1, "ok": True},
        "update_state": {"campaign": "c", "artifact": "agent", "release": "1", "state": "trial"},
    }
    return {"v": 1, "id": DEV, "ts": 1.8e9, **bodies[kind]}


@st.composite
def payloads(draw: st.DrawFn) -> tuple[str, bytes]:
    """A device's message: a valid body with fields replaced or added by arbitrary JSON,
    nested deep, or bytes mangled; on its own topic."""
    kind = draw(st.sampled_from(KINDS))
    body = _base(kind)
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*body, "data", "versions", "hardware", "x"]))
        body[key] = draw(json_values)
    text = json.dumps(body, allow_nan=True)
    depth = draw(st.integers(0, 3)) * draw(st.sampled_from([1, 10, 3000]))
    if depth:
        text = text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.binary(max_size=8)) + raw[cut:]
    return contract.topic(DEV, kind), raw


@given(st.binary(max_size=9000), st.sampled_from(KINDS))
@settings(max_examples=100, deadline=None)
def test_decode_of_any_bytes_is_a_message_or_a_refusal(raw: bytes, kind: str) -> None:
    try:
        _d, _k, body = contract.decode(contract.topic(DEV, kind), raw)
    except contract.ProtocolError as exc:
        assert exc.reason in contract.REASONS
    else:
        assert contract.shape_problem(body) == ""


def _hostile_json(msg: tuple[str, bytes]) -> None:
    verdict = gate.decode(*msg)
    if isinstance(verdict, gate.Refused):
        assert verdict.reason in contract.REASONS, verdict  # never decode_failure
        return
    _d, _k, body = verdict
    assert contract.shape_problem(body) == ""
    json.dumps(body, allow_nan=False).encode()  # storable as JSON, UTF-8


@given(payloads())
@settings(max_examples=60, deadline=None)
def test_decode_of_hostile_json_is_a_message_or_a_refusal(msg: tuple[str, bytes]) -> None:
    _hostile_json(msg)


@pytest.mark.hil_long
@given(payloads())
@settings(max_examples=5000, deadline=None)
def test_decode_of_hostile_json_long(msg: tuple[str, bytes]) -> None:
    _hostile_json(msg)


class _Path:
    """The server's per-message path without the network: gate, decode, SafeStore."""

    def __init__(self, url: str) -> None:
        upgrade(url)
        self.sessions = make_sessionmaker(make_engine(url))
        self.safe = SafeStore(Registry(self.sessions), Metrics(), threading.Event())
        self.honest_seq = 0

    def one(self, topic: str, raw: bytes) -> str:
        verdict = gate.precheck(topic, lambda _d: False, lambda _d, _k, _n: True, 0.0)
        if verdict is None:
            verdict = gate.decode(topic, raw)
        if isinstance(verdict, gate.Refused):
            return verdict.reason
        device_id, kind, body = verdict
        done = self.safe.apply([Accepted(device_id, kind, body, time.time(), raw)])
        assert done is not None
        return "dead_letter" if done[1] else "stored"

    def honest(self) -> None:
        self.honest_seq += 1
        body = {"seq": self.honest_seq, "kind": "agent", "interval_s": 30, "uptime_s": 1.0}
        topic, raw, _q, _r = contract.encode("heartbeat", "fuzz-honest", body, time.time())
        assert self.one(topic, raw) == "stored"

    def honest_stored(self) -> int:
        with self.sessions() as db:
            q = sa.select(sa.func.count()).select_from(Heartbeat)
            return int(db.scalar(q.where(Heartbeat.device_id == "fuzz-honest")) or 0)


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Path]:
    yield _Path(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fleet.db'}")


_FIXTURE_OK = [HealthCheck.function_scoped_fixture]  # the module's DB is meant to be shared


def _server_path(path: _Path, msg: tuple[str, bytes]) -> None:
    before = path.honest_stored()
    outcome = path.one(*msg)
    assert outcome in (*gate.REASONS, "stored", "dead_letter")
    path.honest()
    assert path.honest_stored() == before + 1


@given(msg=payloads())
@settings(max_examples=40, deadline=None, suppress_health_check=_FIXTURE_OK)
def test_server_path_never_raises_and_honest_traffic_is_stored(
    path: _Path, msg: tuple[str, bytes]
) -> None:
    _server_path(path, msg)


@pytest.mark.hil_long
@given(msg=payloads())
@settings(max_examples=800, deadline=None, suppress_health_check=_FIXTURE_OK)
def test_server_path_long(path: _Path, msg: tuple[str, bytes]) -> None:
    _server_path(path, msg)


def test_corpus_through_the_server_path(path: _Path) -> None:
    seen = 0
    for file in sorted(CORPUS.iterdir()):
        data = file.read_bytes()
        topic, _nl, raw = data.partition(b"\n")
        outcome = path.one(topic.decode(), raw)
        if file.name.startswith("valid-"):
            assert outcome == "stored", file.name
        else:
            assert outcome in contract.REASONS, (file.name, outcome)
        path.honest()
        seen += 1
    assert seen >= 20
    with path.sessions() as db:
        assert db.scalar(sa.select(sa.func.count()).select_from(DeadLetter)) == 0
        assert db.scalar(sa.select(sa.func.count()).select_from(Event)) is not None
