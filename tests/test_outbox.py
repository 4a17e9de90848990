"""The on-disk outbox: durability, sequence and ids across restarts, the budget policy
(snapshots dropped first, counted, reported), and the sender against a real TLS Mosquitto:
a PUBACK marks a row sent, only a receipt deletes it, forged receipts delete nothing, and
a broker outage loses nothing."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import MqttSettings
from agent.errors import PayloadError
from agent.health.heartbeat import HostReadings, build_heartbeat
from agent.link.mqtt import Link
from agent.link.outbox import EVENT, SNAPSHOT, Outbox
from agent.link.sender import Sender
from firmware import contract
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.procs import RIG_RECONNECT, Broker, wait_for
from tests.mqtt_helpers import Client, server_creds

DEV = "cam-outbox-1"


def _box(tmp_path: Path, max_bytes: int = 1 << 20, max_rows: int = 1000) -> Outbox:
    return Outbox(tmp_path / "outbox.sqlite", DEV, max_bytes, max_rows)


def test_events_survive_a_reopen_with_seq_and_epoch(tmp_path: Path) -> None:
    box = _box(tmp_path)
    ids = [box.add("track.new", {"track": i}, 1800000000.0 + i) for i in range(3)]
    box.close()  # what a kill -9 leaves is the same: every add was committed
    again = _box(tmp_path)
    assert again.depth() == 3 and again.epoch == box.epoch
    assert [e["event_id"] for e in again.events()] == ids
    assert again.add("track.end", {"track": 0}, 1800000010.0) == f"{DEV}-{box.epoch}-3"
    for body in again.events():
        contract.validate("event", body)  # stored exactly as it will travel
    other = Outbox(tmp_path / "new.sqlite", DEV, 1 << 20, 1000)
    assert other.epoch != box.epoch  # a new outbox file never repeats an id


def test_ack_deletes_only_what_was_acknowledged(tmp_path: Path) -> None:
    box = _box(tmp_path)
    for i in range(5):
        box.add("t", {"i": i}, 1800000000.0)
    rows = box.pending(0, 10)
    assert [r.id for r in rows] == sorted(r.id for r in rows) and len(rows) == 5
    assert box.ack([rows[1].id, rows[3].id]) == 2
    assert box.ack([rows[1].id]) == 0  # a second PUBACK for the same row changes nothing
    assert [r.id for r in box.pending(0, 10)] == [rows[0].id, rows[2].id, rows[4].id]
    assert [r.id for r in box.pending(rows[2].id, 10)] == [rows[4].id]
    assert box.size() == sum(len(r.payload) for r in box.pending(0, 10))


def test_an_event_that_does_not_fit_the_contract_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    box = _box(tmp_path)
    with pytest.raises(PayloadError, match="oversized"):
        box.add("snapshot", {"jpeg": "A" * 70000}, 1800000000.0, SNAPSHOT)
    with pytest.raises(PayloadError, match="bad_schema"):
        box.add("x" * 300, {}, 1800000000.0)
    assert box.depth() == 0 and box.next_seq() == 0


def test_budget_drops_snapshots_first_then_oldest_events_and_counts(tmp_path: Path) -> None:
    snap = {"jpeg": "B" * 20000}
    box = _box(tmp_path, max_bytes=100_000)
    kept = [box.add("snapshot", snap, 1.8e9, SNAPSHOT) for _ in range(4)]  # ~80 KB
    events = [box.add("track.end", {"n": i, "pad": "e" * 2000}, 1.8e9) for i in range(20)]
    assert all(kept) and all(events)
    # 20 events of ~2.1 KB (~42 KB) pushed two snapshots out, the oldest first; no event lost
    dropped = box.dropped()
    assert dropped.snapshots == 2 and dropped.events == 0
    left = [e["event_id"] for e in box.events()]
    assert left == kept[2:] + events
    assert box.size() <= 100_000
    # a new snapshot that cannot fit even without the old ones is dropped itself...
    big = {"jpeg": "C" * 60000}
    box2 = _box(tmp_path / "b", max_bytes=70_000)
    for i in range(6):
        box2.add("track.end", {"n": i, "pad": "e" * 2000}, 1.8e9)
    assert box2.add("snapshot", big, 1.8e9, SNAPSHOT) is None
    assert box2.dropped().snapshots == 1 and box2.depth() == 6
    # ...and with no snapshot left, the oldest events go, each one counted
    for i in range(30):
        box2.add("track.end", {"n": 100 + i, "pad": "e" * 2000}, 1.8e9)
    assert box2.dropped().events > 0 and box2.size() <= 70_000
    assert box2.events()[-1]["data"]["n"] == 129  # the newest is never the one dropped
    # the counts are on disk, and reported in the heartbeat
    again = _box(tmp_path / "b", max_bytes=70_000)
    assert again.dropped() == box2.dropped()
    hb = build_heartbeat(1, 30, 5, HostReadings(), None, {})
    hb.update({"outbox": again.depth(), "outbox_dropped": again.dropped().total})
    contract.encode("heartbeat", DEV, hb, 1.8e9)


def test_row_budget_counts_rows(tmp_path: Path) -> None:
    box = _box(tmp_path, max_rows=10)
    for i in range(3):
        box.add("snapshot", {"i": i}, 1.8e9, SNAPSHOT)
    for i in range(10):
        box.add("e", {"i": i}, 1.8e9, EVENT)
    assert box.depth() == 10 and box.dropped().snapshots == 3 and box.dropped().events == 0


# ---------------------------------------------------------------- sender, real broker


def _link(creds: DeviceCredentials, port: int) -> Link:
    settings = MqttSettings(
        host="localhost",
        port=port,
        ca=creds.root_pem,
        cert=creds.cert_pem,
        key=creds.key_pem,
        keepalive_s=5,
        **RIG_RECONNECT,  # type: ignore[arg-type]
    )
    return Link(creds.device_id, settings)


def _receipt(watcher: Client, device: str, body: dict[str, object]) -> None:
    topic, payload, _q, _r = contract.encode("receipt", device, body, time.time())
    watcher.publish(topic, payload)


def test_sender_marks_sent_on_puback_deletes_on_receipt_and_resends_after_an_outage(
    tmp_path: Path,
    ca: CertificateAuthority,
    device_factory: Callable[[str], DeviceCredentials],
) -> None:
    """The watcher holds the server's certificate and speaks the contract: it publishes
    receipts the way the fleet server does (the full server: tests/test_receipts_e2e.py)."""
    device = "cam-outbox-2"
    creds = device_factory(device)
    broker = Broker(ca, tmp_path / "broker").start()
    watcher = Client(broker.port, ca.root_cert_path, *server_creds(ca), "w1")
    box = Outbox(tmp_path / "outbox.sqlite", device, 1 << 20, 1000)
    link = _link(creds, broker.port)
    sender = Sender(box, link, window=5, receipt_timeout_s=60)
    topic = contract.topic(device, "event")
    ep = box.epoch
    try:
        watcher.subscribe(topic)
        for i in range(20):
            box.add("track.new", {"i": i}, 1.8e9 + i)
        link.start()
        sender.start()
        got = watcher.wait_for(topic, 20, timeout=15)
        assert sorted(json.loads(p)["seq"] for p in got[:20]) == list(range(20))
        assert all(json.loads(p)["epoch"] == ep for p in got)
        wait_for(lambda: box.unreceipted() == 20, 10, what="every row acknowledged")
        assert box.depth() == 20 and sender.acked == 20  # PUBACK deletes nothing

        # forged or wrong receipts delete nothing
        for bad in (
            {"epoch": "deadbeef", "ranges": [[0, 19]]},  # another stream
            {"epoch": ep, "ranges": [[0, 20]]},  # names a seq never given out
            {"epoch": ep, "ranges": [[0, 2**53]]},  # huge
            {"epoch": ep, "ranges": [[5, 1]]},  # malformed
            {"epoch": ep, "ranges": [[0, 0]] * 65},  # too many ranges
        ):
            _receipt(watcher, device, bad)
        wait_for(lambda: sender.bad_receipts == 5, 10, what="forged receipts refused")
        malformed = contract.topic(device, "receipt")
        watcher.publish(malformed, b'{"v": 1, "id": "cam-outbox-2", "ts": 1, "ranges": 5}')
        watcher.publish(malformed, b"not json")
        _receipt(watcher, "cam-someone-else", {"epoch": ep, "ranges": [[0, 19]]})  # not ours
        time.sleep(0.5)
        assert box.depth() == 20 and box.unreceipted() == 20

        _receipt(watcher, device, {"epoch": ep, "ranges": [[0, 9]]})
        wait_for(lambda: box.depth() == 10, 10, what="receipted rows deleted")
        _receipt(watcher, device, {"epoch": ep, "ranges": [[0, 9]]})  # again: idempotent
        _receipt(watcher, device, {"epoch": ep, "ranges": [[10, 14], [15, 19]]})
        wait_for(lambda: box.depth() == 0, 10, what="outbox emptied by receipts")
        assert (box.unreceipted(), sender.receipted) == (0, 20)

        watcher.close()
        broker.stop()  # outage: events keep coming and stay on disk
        wait_for(lambda: not link.is_connected(), 10, what="link down")
        for i in range(20, 35):
            box.add("track.new", {"i": i}, 1.8e9 + i)
        time.sleep(0.5)
        assert box.depth() == 15 and box.unreceipted() == 0

        # a receipt for rows not sent yet deletes nothing, even when its range is valid
        broker = Broker(ca, tmp_path / "broker", port=broker.port).start()
        watcher = Client(broker.port, ca.root_cert_path, *server_creds(ca), "w2")
        watcher.subscribe(topic)
        wait_for(lambda: box.unreceipted() == 15, 30, what="rows acknowledged after the outage")
        _receipt(watcher, device, {"epoch": ep, "ranges": [[20, 34]]})
        wait_for(lambda: box.depth() == 0, 10, what="outbox emptied after the outage")
        assert sender.receipted == 35
    finally:
        sender.stop()
        link.close()
        watcher.close()
        broker.stop()
        box.close()


def test_unsent_rows_are_not_deleted_by_a_receipt(tmp_path: Path) -> None:
    box = _box(tmp_path)
    for i in range(3):
        box.add("t", {"i": i}, 1.8e9)
    rows = box.pending(0, 10)
    assert box.receipt([[0, 2]]) == []  # nothing was sent
    assert box.mark_sent([rows[0].id, rows[1].id]) == [rows[0].id, rows[1].id]
    assert box.mark_sent([rows[0].id]) == [rows[0].id]  # a second PUBACK: still waiting
    assert box.unreceipted() == 2
    assert box.receipt([[0, 2]]) == [rows[0].id, rows[1].id]
    assert (box.depth(), box.unreceipted()) == (1, 0)


def test_receipt_resend_timeout_backs_off_on_a_monotonic_clock(
    tmp_path: Path, broker: Broker, device_factory: Callable[[str], DeviceCredentials]
) -> None:
    """No receipt comes (no server): the rows go again after the timeout, then after twice
    it, and so on up to the cap; the wall clock plays no part."""
    device = "cam-outbox-4"
    creds = device_factory(device)
    box = Outbox(tmp_path / "outbox.sqlite", device, 1 << 20, 1000)
    link = _link(creds, broker.port)
    now = [1000.0]
    sender = Sender(box, link, window=5, receipt_timeout_s=10, receipt_timeout_cap_s=30,
                    clock=lambda: now[0])  # fmt: skip
    try:
        for i in range(3):
            box.add("t", {"i": i}, 1.8e9)
        link.start()
        assert link.wait_connected(15)

        def settle(sent: int) -> None:
            def done() -> bool:
                sender.step()
                return sender.sent == sent and box.unreceipted() == 3 and not sender._inflight

            wait_for(done, 10, what=f"{sent} sends acknowledged")

        settle(3)
        for step, (advance, total) in enumerate(((9.9, 3), (0.2, 6), (19.0, 6), (1.5, 9),
                                                  (30.5, 12), (30.5, 15))):  # fmt: skip
            now[0] += advance
            sender.step()
            settle(total)
            assert sender.resends == total // 3 - 1, step
        assert sender._timeout == 30  # capped
        topic, payload, _q, _r = contract.encode(
            "receipt", device, {"epoch": box.epoch, "ranges": [[0, 2]]}, 1.0
        )
        sender._on_receipt(contract.decode(topic, payload)[2])
        sender.step()
        assert box.depth() == 0 and sender._timeout == 10  # a receipt resets the wait
    finally:
        link.close()
        box.close()


def test_a_row_the_broker_refuses_is_counted_and_does_not_block_the_queue(
    tmp_path: Path, broker: Broker, device_factory: Callable[[str], DeviceCredentials]
) -> None:
    """Mosquitto answers a QoS 1 publish on a topic the ACL denies with PUBACK reason 0x87
    (MQTT 5): the row is dropped and counted as refused, never resent for ever; the row on
    the device's own topic is acknowledged and deleted as usual."""
    device = "cam-outbox-3"
    creds = device_factory(device)
    box = Outbox(tmp_path / "outbox.sqlite", device, 1 << 20, 1000)
    good = box.add("track.new", {"i": 1}, 1.8e9)
    # a row for another device's topic, as a corrupted file could hold
    with sqlite3.connect(tmp_path / "outbox.sqlite") as db:
        db.execute(
            "INSERT INTO messages (cls, topic, payload, size, created) VALUES (?,?,?,?,?)",
            ("event", contract.topic("cam-someone-else", "event"), b"{}", 2, 0.0),
        )
    box.close()
    box = Outbox(tmp_path / "outbox.sqlite", device, 1 << 20, 1000)
    link = _link(creds, broker.port)
    sender = Sender(box, link, window=5)
    try:
        link.start()
        sender.start()
        wait_for(lambda: box.depth() == 1 and box.unreceipted() == 1, 15, what="rows settled")
        assert good is not None and sender.acked == 1  # it waits for its receipt
        assert sender.refused == 1  # the foreign one, by its PUBACK reason code
    finally:
        sender.stop()
        link.close()
        box.close()
