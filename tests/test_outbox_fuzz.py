"""Attack on the agent outbox (issue 14): random interleavings against a reference model.

Adds, PUBACKs (also for rows gone or never sent), receipts (valid, forged, repeated,
overlapping, for unsent rows, for another stream), failed writes on a full database (real
SQLite, ``max_page_count``) and reopening the file, in any order. A row leaves only after
it was sent and a receipt named it; the counters always equal a recount of the file; what
is pending comes oldest first.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import OutboxError
from agent.link.outbox import Outbox
from firmware import contract

DEV = "cam-fuzz-01"

_op = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 3)),
    st.tuples(st.just("puback"), st.integers(0, 30)),
    st.tuples(
        st.just("receipt"),
        st.lists(st.tuples(st.integers(-2, 30), st.integers(-2, 30)), max_size=4),
    ),
    st.tuples(st.just("forged"), st.integers(0, 30)),
    st.tuples(st.just("full"), st.booleans()),
    st.tuples(st.just("reopen"), st.just(0)),
)


def _recount(ob: Outbox) -> tuple[int, int, int]:
    rows, size, sent = ob._db.execute(
        "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(sent), 0) FROM messages"
    ).fetchone()
    return int(rows), int(size), int(sent)


def _fill(ob: Outbox, full: bool) -> None:
    if full:
        pages = int(ob._db.execute("PRAGMA page_count").fetchone()[0])
        ob._db.execute(f"PRAGMA max_page_count = {pages}")
    else:
        ob._db.execute("PRAGMA max_page_count = 1073741823")


@settings(max_examples=60, deadline=None)
@given(st.lists(_op, min_size=1, max_size=30))
def test_outbox_matches_reference_model(ops: list[tuple[str, object]]) -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        path = Path(d) / "outbox.sqlite"
        ob = Outbox(path, DEV, 1 << 20, 1000)
        epoch = ob.epoch
        rows: dict[int, dict[str, int]] = {}  # seq -> {"sent": 0/1}
        full = False
        try:
            for op, arg in ops:
                if op == "add":
                    seq = ob.next_seq()
                    try:
                        ob.add("motion", {"n": int(str(arg))}, 1.0)
                        rows[seq] = {"sent": 0}
                    except OutboxError:
                        assert full
                elif op == "puback":
                    pend = {r.id: r for r in ob.pending(0, 1000)}
                    ids = sorted(pend)[: int(str(arg)) % 5]
                    ids += [10_000]  # a row that never was
                    try:
                        ob.mark_sent(ids)
                        for rid in ids:
                            if rid in pend:
                                rows[_seq_of(pend[rid].payload)]["sent"] = 1
                    except OutboxError:
                        assert full
                elif op in ("receipt", "forged"):
                    if op == "receipt":
                        body = {"epoch": epoch, "ranges": [list(r) for r in arg]}  # type: ignore[attr-defined]
                    else:
                        body = {"epoch": "other", "ranges": [[0, int(str(arg))]]}
                    try:
                        ranges = contract.receipt_ranges(body, epoch, ob.next_seq())
                    except contract.ProtocolError:
                        continue
                    try:
                        ob.receipt(ranges)
                    except OutboxError:
                        assert full
                        continue
                    for lo, hi in ranges:
                        for s in range(lo, hi + 1):
                            if s in rows and rows[s]["sent"]:
                                del rows[s]
                elif op == "full":
                    full = bool(arg)
                    _fill(ob, full)
                else:
                    ob.close()
                    ob = Outbox(path, DEV, 1 << 20, 1000)
                    assert ob.epoch == epoch
                    _fill(ob, full)
                # invariants
                assert (ob.depth(), ob.size(), ob.unreceipted()) == _recount(ob)
                assert ob.depth() == len(rows)
                assert ob.unreceipted() == sum(r["sent"] for r in rows.values())
                left = ob.pending(0, 1000)
                assert [r.id for r in left] == sorted(r.id for r in left)
                assert [_seq_of(r.payload) for r in left] == sorted(rows)
        finally:
            ob.close()


def _seq_of(payload: bytes) -> int:
    return int(json.loads(payload)["seq"])


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=True)
    | st.text(max_size=3),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=2), kids, max_size=2)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(-3, 2**64) | st.booleans() | st.floats() | _json, max_size=3) | _json,
        max_size=70,
    ),
    st.integers(0, 50),
)
def test_receipt_ranges_hostile_inputs(ranges: list[object], next_seq: int) -> None:
    """Whatever the ranges hold: ProtocolError, or only int ranges 0 <= lo <= hi < next_seq."""
    try:
        got = contract.receipt_ranges({"epoch": "e1", "ranges": ranges}, "e1", next_seq)
    except contract.ProtocolError:
        return
    assert len(got) <= contract.RECEIPT_MAX_RANGES
    for lo, hi in got:
        assert type(lo) is int and type(hi) is int
        assert 0 <= lo <= hi < next_seq


def test_refused_events_survive_a_restart_while_the_disk_is_full() -> None:
    """Events refused on a full disk were counted only in memory until the next event was
    stored: a restart (power cut, upgrade) while the disk was still full forgot them."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        path = Path(d) / "outbox.sqlite"
        ob = Outbox(path, DEV, 1 << 20, 1000)
        _fill(ob, True)
        failed = 0
        for i in range(40):
            try:
                ob.add("motion", {"n": i}, 1.0)
            except OutboxError:
                failed += 1
        assert failed > 0
        assert ob.refused() == failed
        ob.close()
        again = Outbox(path, DEV, 1 << 20, 1000)
        try:
            assert again.refused() == failed
        finally:
            again.close()
