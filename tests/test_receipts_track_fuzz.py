"""Attack on the server's hole tracker (issue 14): random arrivals vs a reference model.

Arrivals in any order, repeated, in several streams (epochs, including old ones coming
back), with huge gaps, and ageing at random times. The tracker must account for every
number of the current stream exactly once (held, open hole or counted lost), and its
``lost`` must equal the numbers it ever counted lost that did not arrive later in *their
own* stream.
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_server.receipts import track as tr

LOST_AFTER = 10.0

_recv = st.tuples(
    st.just("recv"),
    st.sampled_from(["a", "b", "c"]),
    st.lists(st.integers(0, 40) | st.integers(0, 2**62), min_size=1, max_size=6),
)
_age = st.tuples(st.just("age"), st.just(""), st.lists(st.integers(0, 30), min_size=1, max_size=1))
_ops = st.lists(_recv | _age, min_size=1, max_size=40)


def _spans(spans: list[list[int]]) -> int:
    return sum(int(s[1]) - int(s[0]) + 1 for s in spans)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_tracker_matches_reference_model(ops: list[tuple[str, str, list[int]]]) -> None:
    s = tr.Stream()
    now = 0.0
    received: dict[str, set[int]] = {}  # per epoch: numbers stored
    counted: dict[str, set[tuple[int, int]]] = {}  # per epoch: ranges counted lost
    lost_truth: dict[str, int] = {}  # per epoch: numbers counted lost, not arrived since
    seen_epochs: list[str] = []
    for op, epoch, arg in ops:
        if op == "age":
            now += arg[0]
            before = s.epoch
            out = tr.age(s, now, LOST_AFTER)
            lost_truth[before] = lost_truth.get(before, 0) + out.new_lost
            assert all(now - h[2] < LOST_AFTER for h in s.holes)
        else:
            out = tr.Outcome()
            old = s.epoch
            took = tr.switch_epoch(s, epoch, out)
            if old != epoch and old:
                lost_truth[old] = lost_truth.get(old, 0) + out.new_lost
            if epoch in seen_epochs and epoch != old:
                assert not took, "an older stream came back and was followed"
            if not took:
                continue
            if epoch not in seen_epochs:
                seen_epochs.append(epoch)
            rec = received.setdefault(epoch, set())
            got = tr.receive(s, arg, now)
            # arrivals that were counted lost in this stream are taken off its count
            back = {
                n
                for n in arg
                if n not in rec and any(lo <= n <= hi for lo, hi in counted.get(epoch, set()))
            }
            lost_truth[epoch] = lost_truth.get(epoch, 0) + got.new_lost - len(back)
            assert got.late == len(back)
            rec.update(arg)
            for lo, hi in got.lost_ranges:
                counted.setdefault(epoch, set()).add((lo, hi))
        for lo, hi in out.lost_ranges:
            counted.setdefault(
                s.epoch if op == "age" else (old if old != s.epoch else s.epoch), set()
            ).add((lo, hi))
        # invariants
        assert s.lost >= 0 and s.late >= 0
        assert s.lost == sum(lost_truth.values())
        assert len(s.holes) <= tr.MAX_HOLES
        assert len(s.lost_ranges) <= tr.MAX_LOST_RANGES
        rec = received.get(s.epoch, set())
        assert s.top == (max(rec) if rec else -1)
        # held, open holes and lost ranges of this stream cover [0, top] exactly once
        holes = [[int(h[0]), int(h[1])] for h in s.holes]
        spans = sorted(holes + [list(r) for r in s.lost_ranges])
        for a, b in itertools.pairwise(spans):
            assert a[1] < b[0], f"overlapping accounting {a} {b}"
        for lo, hi in spans:
            assert 0 <= lo <= hi <= s.top
            assert not any(lo <= n <= hi for n in rec), "a held number is also missing"
        assert len(rec) + _spans(spans) == s.top + 1


def test_new_stream_number_does_not_take_old_stream_loss_off() -> None:
    """Found by the fuzz above: old stream lost [2, 4]; the new stream's event 2 arriving
    out of order was taken as the old one's late arrival (lost 3 -> 2)."""
    s = tr.Stream()
    tr.switch_epoch(s, "a", tr.Outcome())
    tr.receive(s, [0, 1, 5, 6], 0.0)
    assert tr.age(s, 1000.0, 600.0).new_lost == 3
    tr.switch_epoch(s, "b", tr.Outcome())
    tr.receive(s, [4], 1000.0)
    out = tr.receive(s, [2], 1000.0)
    assert (out.late, s.lost, s.late) == (0, 3, 0)
    assert [[int(h[0]), int(h[1])] for h in s.holes] == [[0, 1], [3, 3]]
