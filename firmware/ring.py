# The node's event outbox: a bounded ring of fixed-size slots in one flash file.
#
# Every event is written here first and sent from here, oldest first, so events made
# while the broker is away go out in order when it is back, and a reset loses none that
# fit. When the ring is full the oldest unsent event is overwritten: that drop is counted
# (total, and the range of sequence numbers lost since the last report) and the node
# reports it before it sends what follows.
#
# On flash:
#   <path>        ``slots`` slots of ``slot_size`` bytes. Slot (seq % slots) holds event
#                 seq: a 10-byte header (seq u32, length u16, crc32 u32 over both and the
#                 data), then the data. A torn write fails the check and counts as lost.
#   <path>.json   {"acked": last seq delivered, "dropped": total dropped,
#                 "unreported": drops not yet reported, "first"/"last": their seq range,
#                 "epoch": the event stream's id, "base": ring seq of wire seq -1},
#                 written atomically (fsutil) whenever it changes.
#
# Receipts (issue 14, docs/protocol.md): with them, an event is *delivered* (``acked``) only
# when the server's receipt names it; a PUBACK only moves ``sent``, which is not kept on
# flash (after a reset everything not receipted goes again). On the wire the stream
# ``epoch`` counts from 0: wire seq = ring seq - base - 1 (``base`` is the ring seq the
# stream started after: 0 for a new ring, the acked seq of a ring made before receipts).

import os

try:
    import config
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import config

try:
    from binascii import crc32
except ImportError:  # a port without it: a plain additive check (local use only)

    def crc32(data: "bytes | bytearray | memoryview", value: int = 0) -> int:
        for b in data:
            value = (value * 31 + b) & 0xFFFFFFFF
        return value


TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

HEADER = 10


class RingError(Exception):
    """An event does not fit a slot, or the ring's file cannot be used."""


def _check(head: "bytes | bytearray | memoryview", data: "bytes | bytearray | memoryview") -> int:
    return crc32(data, crc32(head)) & 0xFFFFFFFF


class Ring:
    def __init__(self, path: str, slots: int, slot_size: int = 512) -> None:
        if slots < 2 or slot_size <= HEADER:
            raise RingError("ring needs 2 slots or more of more than %d bytes" % HEADER)
        self.path = path
        self.slots = slots
        self.slot_size = slot_size
        self._buf = bytearray(slot_size)
        self.acked = 0
        self.dropped = 0
        self.unreported = 0
        self.first = 0
        self.last = 0
        self.base = 0
        self.epoch = ""
        saved = config.read_json(path + ".json")
        if isinstance(saved, dict):
            for key in ("acked", "dropped", "unreported", "first", "last", "base"):
                value = saved.get(key)
                if isinstance(value, int) and value >= 0:
                    setattr(self, key, value)
            epoch = saved.get("epoch")
            if isinstance(epoch, str) and 0 < len(epoch) <= 16:
                self.epoch = epoch
        self.next = self._open() + 1
        if self.next <= self.acked:
            self.next = self.acked + 1
        if not self.epoch:  # a new ring, or one made before receipts: a new stream
            self.epoch = "%08x" % int.from_bytes(os.urandom(4), "big")
            self.base = self.next - 1
            self._save()
        self.sent = self.acked  # PUBACKed this boot; after a reset all goes again

    # ------------------------------------------------------------ file

    def _open(self) -> int:
        """Make the slot file if needed; return the highest seq found in it (0: none)."""
        size = self.slots * self.slot_size
        try:
            ok = os.stat(self.path)[6] == size
        except OSError:
            ok = False
        if not ok:
            zero = bytes(self.slot_size)
            with open(self.path + ".tmp", "wb") as f:
                for _ in range(self.slots):
                    f.write(zero)
            os.rename(self.path + ".tmp", self.path)
            return 0
        top = 0
        with open(self.path, "rb") as f:
            for index in range(self.slots):
                f.seek(index * self.slot_size)
                head = f.read(4)
                seq = int.from_bytes(head, "big") if len(head) == 4 else 0
                if seq > top and seq % self.slots == index:
                    top = seq
        return top

    def _read(self, seq: int) -> "memoryview | None":
        """The data of event ``seq`` if its slot holds it intact."""
        buf = self._buf
        with open(self.path, "rb") as f:
            f.seek((seq % self.slots) * self.slot_size)
            n = f.readinto(buf)
        if n is None or n < HEADER or int.from_bytes(buf[0:4], "big") != seq:
            return None
        length = int.from_bytes(buf[4:6], "big")
        if HEADER + length > n:
            return None
        view = memoryview(buf)
        if int.from_bytes(buf[6:10], "big") != _check(view[0:6], view[HEADER : HEADER + length]):
            return None
        return view[HEADER : HEADER + length]

    def _save(self) -> None:
        config.write_json(
            self.path + ".json",
            {
                "acked": self.acked,
                "dropped": self.dropped,
                "unreported": self.unreported,
                "first": self.first,
                "last": self.last,
                "epoch": self.epoch,
                "base": self.base,
            },
        )

    def _lose(self, seq: int) -> None:
        self.dropped += 1
        self.unreported += 1
        if not self.first:
            self.first = seq
        self.last = seq
        self.acked = seq
        self.sent = max(self.sent, seq)

    # ------------------------------------------------------------ API

    def pending(self) -> int:
        """Events written and not yet acknowledged."""
        return self.next - 1 - self.acked

    def push(self, data: bytes) -> int:
        """Write one event; returns its seq. A full ring first drops its oldest event."""
        if HEADER + len(data) > self.slot_size:
            raise RingError("event of %d bytes, slot holds %d" % (len(data), self.slot_size))
        seq = self.next
        if self.pending() >= self.slots:
            self._lose(self.acked + 1)
            self._save()
        head = seq.to_bytes(4, "big") + len(data).to_bytes(2, "big")
        with open(self.path, "r+b") as f:
            f.seek((seq % self.slots) * self.slot_size)
            f.write(head + _check(head, data).to_bytes(4, "big") + data)
        self.next = seq + 1
        return seq

    def wire(self, seq: int) -> int:
        """The wire seq (0, 1, … within ``epoch``) of ring seq ``seq``."""
        return seq - self.base - 1

    def unreceipted(self) -> int:
        """Events sent (PUBACK) and not yet receipted."""
        return self.sent - self.acked

    def peek(self) -> "tuple[int, bytes] | None":
        """(seq, data) of the oldest unsent event, or None. Unreadable ones count as lost
        (once the sent events before them are receipted, so that none is skipped)."""
        lost = False
        while self.next - 1 > self.sent:
            seq = self.sent + 1
            if seq <= self.acked:
                self.sent = self.acked
                continue
            data = self._read(seq)
            if data is not None:
                if lost:
                    self._save()
                return seq, bytes(data)
            if self.sent > self.acked:
                break  # lost only once the sent events before it are receipted
            self._lose(seq)
            lost = True
        if lost:
            self._save()
        return None

    def ack(self, seq: int) -> None:
        """Event ``seq`` (and everything before it) has been delivered."""
        if seq > self.acked:
            self.acked = seq
            self._save()
        self.sent = max(self.sent, self.acked)

    def mark_sent(self, seq: int) -> None:
        """The broker acknowledged event ``seq``: it waits for its receipt."""
        self.sent = max(self.sent, seq)

    def rewind(self) -> None:
        """Send everything not receipted again (after a reconnect, or a receipt timeout)."""
        self.sent = self.acked

    def receipt(self, ranges: "list[list[int]]") -> int:
        """Apply checked wire ranges (contract.receipt_ranges): the delivered mark moves
        over a range that starts at or below the next undelivered event and was sent.
        Returns how many events it delivered."""
        before = self.acked
        for r in ranges:
            lo = r[0] + self.base + 1
            hi = r[1] + self.base + 1
            if lo <= self.acked + 1 <= hi:
                top = hi if hi <= self.sent else self.sent
                self.acked = max(self.acked, top)
        if self.acked > before:
            self._save()
        return self.acked - before

    def drop_report(self) -> "dict[str, Any] | None":
        """What to tell the fleet about drops not reported yet, or None."""
        if not self.unreported:
            return None
        return {
            "dropped": self.unreported,
            "first_seq": self.first,
            "last_seq": self.last,
            "total": self.dropped,
        }

    def reported(self) -> None:
        self.unreported = 0
        self.first = 0
        self.last = 0
        self._save()
