"""Attack on the node's flash ring with receipts (issue 14): random interleavings against a
reference model (CPython; the ring's own cases also run under MicroPython).

An event leaves the ring (``acked``) only when a receipt named it after its PUBACK, or when
it was dropped from a full ring and counted; what comes out of ``peek`` is what was pushed.
"""

from __future__ import annotations

import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import contract, ring

_op = st.one_of(
    st.tuples(st.just("push"), st.integers(0, 0)),
    st.tuples(st.just("send"), st.integers(1, 3)),
    st.tuples(st.just("receipt"), st.integers(-1, 12), st.integers(-1, 12)),
    st.tuples(st.just("rewind"), st.integers(0, 0)),
    st.tuples(st.just("reset"), st.integers(0, 0)),
    st.tuples(st.just("tear"), st.integers(0, 3)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_op, min_size=1, max_size=40))
def test_ring_matches_reference_model(ops: list[tuple[int | str, ...]]) -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        path = d + "/events"
        r = ring.Ring(path, 4, 64)
        data: dict[int, bytes] = {}
        sent: set[int] = set()  # PUBACKed this boot
        receipted: set[int] = set()
        dropped = 0
        for op in ops:
            if op[0] == "push":
                full = r.pending() >= r.slots
                before = r.acked
                seq = r.push(b"e%d" % len(data))
                data[seq] = b"e%d" % (len(data))
                if full:
                    assert r.acked == before + 1
                    dropped += 1
            elif op[0] == "send":
                for _ in range(int(op[1])):
                    item = r.peek()
                    if item is None:
                        break
                    assert data[item[0]] == item[1]
                    r.mark_sent(item[0])
                    sent.add(item[0])
                dropped = r.dropped  # torn slots met by peek are counted there
            elif op[0] == "receipt":
                body = {"epoch": r.epoch, "ranges": [[op[1], op[2]]]}
                try:
                    ranges = contract.receipt_ranges(body, r.epoch, r.wire(r.next))
                except contract.ProtocolError:
                    continue
                before = r.acked
                r.receipt(ranges)
                for s in range(before + 1, r.acked + 1):
                    assert s in sent, f"event {s} delivered without a PUBACK"
                    lo, hi = ranges[0]
                    assert lo <= r.wire(s) <= hi, f"event {s} delivered without a receipt"
                    receipted.add(s)
            elif op[0] == "rewind":
                r.rewind()
                sent = {s for s in sent if s <= r.acked}
            elif op[0] == "tear":  # a slot goes bad on flash (torn write, worn cell)
                with open(path, "r+b") as f:
                    f.seek(int(op[1]) * 64 + ring.HEADER)
                    f.write(b"\xff\xfe")
                continue  # its loss is counted when peek meets it
            else:
                r = ring.Ring(path, 4, 64)
                sent = {s for s in sent if s <= r.acked}
            if op[0] == "reset":
                dropped = r.dropped
            assert r.dropped == dropped
            assert r.acked + r.pending() == r.next - 1
            assert r.unreceipted() == r.sent - r.acked >= 0
            # everything at or below the mark was receipted or counted dropped
            assert r.acked - len({s for s in receipted if s <= r.acked}) == dropped
