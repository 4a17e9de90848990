# Cases for the flash event ring (firmware/ring.py), under CPython and MicroPython.

from firmware import config, ring
from tests.mp.checks import raises, tmp_dir


def _ring(slots=4, size=64, path=None):
    path = path or tmp_dir() + "/events"
    return ring.Ring(path, slots, size), path


def _drain(r):
    out = []
    for _ in range(100):
        item = r.peek()
        if item is None:
            return out
        out.append(item)
        r.ack(item[0])
    raise AssertionError("ring never empties")


def test_events_come_out_in_order_and_survive_a_reset():
    r, path = _ring()
    assert r.pending() == 0 and r.peek() is None
    assert [r.push(b"e%d" % i) for i in range(3)] == [1, 2, 3]
    assert r.pending() == 3
    assert r.peek() == (1, b"e0")
    assert r.peek() == (1, b"e0"), "peek does not consume"
    r.ack(1)
    again, _p = _ring(path=path)  # a reset: state and slots read back from flash
    assert again.pending() == 2 and again.next == 4
    assert _drain(again) == [(2, b"e1"), (3, b"e2")]
    assert again.push(b"e3") == 4


def test_full_ring_drops_the_oldest_and_counts_it():
    r, path = _ring(slots=4)
    for i in range(10):
        r.push(b"e%d" % i)
    assert r.pending() == 4 and r.dropped == 6
    assert r.drop_report() == {"dropped": 6, "first_seq": 1, "last_seq": 6, "total": 6}
    saved = config.read_json(path + ".json")
    assert saved["unreported"] == 6 and saved["acked"] == 6
    assert _drain(r) == [(7, b"e6"), (8, b"e7"), (9, b"e8"), (10, b"e9")]
    r.reported()
    assert r.drop_report() is None and r.dropped == 6
    for i in range(5):
        r.push(b"f%d" % i)
    assert r.drop_report() == {"dropped": 1, "first_seq": 11, "last_seq": 11, "total": 7}


def test_a_torn_slot_is_counted_as_lost_not_sent():
    r, path = _ring(slots=4, size=64)
    for i in range(3):
        r.push(b"event-%d" % i)
    with open(path, "r+b") as f:  # a power cut in the middle of writing slot 2
        f.seek(2 * 64 + ring.HEADER + 2)
        f.write(b"XX")
    again, _p = _ring(slots=4, size=64, path=path)
    assert _drain(again) == [(1, b"event-0"), (3, b"event-2")]
    assert again.drop_report() == {"dropped": 1, "first_seq": 2, "last_seq": 2, "total": 1}


def test_geometry_change_starts_a_fresh_file_after_the_acked_seq():
    r, path = _ring(slots=4, size=64)
    for _ in range(3):
        r.push(b"x")
    _drain(r)
    bigger, _p = _ring(slots=8, size=64, path=path)
    assert bigger.pending() == 0 and bigger.push(b"y") == 4


def test_refusals():
    r, _path = _ring(slots=4, size=32)
    raises(ring.RingError, r.push, b"x" * (32 - ring.HEADER + 1))
    assert r.push(b"x" * (32 - ring.HEADER)) == 1
    raises(ring.RingError, ring.Ring, tmp_dir() + "/e", 1, 64)
    raises(ring.RingError, ring.Ring, tmp_dir() + "/e", 4, ring.HEADER)


def test_bad_state_file_is_ignored_not_trusted():
    r, path = _ring()
    r.push(b"a")
    config.write_json(path + ".json", {"acked": -5, "dropped": "many"})
    again, _p = _ring(path=path)
    assert again.acked == 0 and again.dropped == 0 and again.pending() == 1


# ---------------------------------------------------------------- receipts (issue 14)


def test_stream_epoch_and_wire_numbers_survive_a_reset():
    r, path = _ring()
    assert len(r.epoch) == 8 and r.base == 0
    assert r.wire(r.push(b"a")) == 0 and r.wire(r.push(b"b")) == 1
    again, _p = _ring(path=path)
    assert again.epoch == r.epoch and again.base == 0 and again.wire(again.next) == 2
    other, _p = _ring()
    assert other.epoch != r.epoch


def test_a_ring_made_before_receipts_starts_a_stream_at_zero():
    r, path = _ring()
    for _ in range(3):
        r.push(b"x")
    r.ack(2)
    config.write_json(path + ".json", {"acked": 2, "dropped": 0, "unreported": 0,
                                       "first": 0, "last": 0})  # fmt: skip
    old, _p = _ring(path=path)
    assert old.base == 3 and old.wire(old.push(b"y")) == 0
    assert len(old.epoch) == 8


def test_puback_marks_sent_receipt_delivers_rewind_resends():
    r, path = _ring(slots=8)
    for i in range(5):
        r.push(b"e%d" % i)
    first = r.peek()
    assert first == (1, b"e0")
    r.mark_sent(1)
    r.mark_sent(2)
    assert r.peek() == (3, b"e2") and r.unreceipted() == 2 and r.pending() == 5
    assert r.receipt([[0, 4]]) == 2  # only what was sent
    assert (r.acked, r.pending(), r.unreceipted()) == (2, 3, 0)
    r.mark_sent(3)
    r.mark_sent(4)
    r.rewind()
    assert r.peek() == (3, b"e2")  # sent again from the oldest not receipted
    assert r.receipt([[3, 3]]) == 0  # a hole before it: nothing moves
    r.mark_sent(4)
    assert r.receipt([[2, 2], [3, 3]]) == 2 and r.acked == 4
    again, _p = _ring(slots=8, path=path)
    assert again.acked == 4 and again.sent == 4 and again.peek() == (5, b"e4")


def test_a_torn_slot_after_sent_events_does_not_deliver_them_unreceipted():
    # attack14: an unreadable slot found while earlier events were sent (PUBACK) but not
    # receipted moved the delivered mark over them: they left the ring with no receipt.
    r, path = _ring(slots=8)
    for i in range(4):
        r.push(b"e%d" % i)
    assert r.peek() == (1, b"e0")
    r.mark_sent(1)
    assert r.peek() == (2, b"e1")
    r.mark_sent(2)
    with open(path, "r+b") as f:  # slot of event 3 torn
        f.seek(3 * 64 + 8)
        f.write(b"\xff\xff")
    assert r.peek() is None, "waits for the receipt of 1..2 before losing 3"
    assert r.acked == 0 and r.unreceipted() == 2 and r.dropped == 0
    r.rewind()  # a receipt timeout: 1 and 2 go again
    assert r.peek() == (1, b"e0")
    r.mark_sent(1)
    r.mark_sent(2)
    assert r.receipt([[0, 1]]) == 2  # wire 0..1 = ring 1..2
    assert r.peek() == (4, b"e3"), "now 3 is counted lost"
    assert r.acked == 3 and r.dropped == 1
