"""Per-device event stream accounting: pure decisions on data, no I/O.

A device that speaks receipts numbers its events 0, 1, 2, … within a stream (``epoch``).
The server keeps, per device, the highest sequence number it holds (``top``) and the holes
below it, each with the time it was first seen. Everything in ``[0, top]`` outside the
holes is held. A hole that stays open longer than ``lost_after_s`` is a loss: its numbers
are counted in ``lost`` and remembered (a bounded list) so that an event arriving after all
is recognised and taken off the count again (``late``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Open holes kept per device; beyond it the oldest are counted lost at once (a device that
# sends every other number cannot grow the server's state without bound).
MAX_HOLES = 256
# Lost ranges remembered per device (to recognise late arrivals).
MAX_LOST_RANGES = 64
# Older streams of a device remembered: their late events are stored but not tracked.
MAX_OLD_EPOCHS = 4


@dataclass
class Stream:
    epoch: str = ""
    top: int = -1  # highest sequence number held; -1: none yet
    holes: list[list[float]] = field(default_factory=list)  # [lo, hi, opened_at], sorted
    lost: int = 0  # numbers counted lost, over the device's life
    lost_ranges: list[list[int]] = field(default_factory=list)  # recent, [lo, hi]
    late: int = 0  # numbers counted lost that arrived after all
    old_epochs: list[str] = field(default_factory=list)

    @property
    def contiguous(self) -> int:
        """Highest number below which nothing is missing (-1: not even 0 is held)."""
        return int(self.holes[0][0]) - 1 if self.holes else self.top

    def open_count(self) -> int:
        """Numbers in open holes (missing, not yet counted lost)."""
        return sum(int(h[1]) - int(h[0]) + 1 for h in self.holes)

    def as_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "top": self.top,
            "contiguous": self.contiguous,
            "holes": [[int(h[0]), int(h[1]), h[2]] for h in self.holes],
            "lost": self.lost,
            "lost_ranges": [list(r) for r in self.lost_ranges],
            "late": self.late,
        }


@dataclass
class Outcome:
    new_lost: int = 0  # numbers counted lost by this step
    late: int = 0  # numbers taken off the lost count by this step
    lost_ranges: list[list[int]] = field(default_factory=list)  # what this step counted


def merge(seqs: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def _subtract(spans: list[list[Any]], lo: int, hi: int) -> tuple[list[list[Any]], int]:
    """Take [lo, hi] out of sorted spans [a, b, *rest]; (new spans, numbers removed)."""
    out: list[list[Any]] = []
    removed = 0
    for span in spans:
        a, b = int(span[0]), int(span[1])
        if b < lo or a > hi:
            out.append(span)
            continue
        removed += min(b, hi) - max(a, lo) + 1
        if a < lo:
            out.append([a, lo - 1, *span[2:]])
        if b > hi:
            out.append([hi + 1, b, *span[2:]])
    return out, removed


def _count_lost(stream: Stream, holes: list[list[float]], out: Outcome) -> None:
    for h in holes:
        lo, hi = int(h[0]), int(h[1])
        n = hi - lo + 1
        stream.lost += n
        out.new_lost += n
        stream.lost_ranges.append([lo, hi])
        out.lost_ranges.append([lo, hi])
    del stream.lost_ranges[:-MAX_LOST_RANGES]


def switch_epoch(stream: Stream, epoch: str, out: Outcome) -> bool:
    """Follow the device to stream ``epoch``; False when it is an older one (ignored).

    The device drew a new epoch because its store was made anew: what was missing of the
    old stream cannot come any more and is counted lost now.
    """
    if epoch == stream.epoch:
        return True
    if epoch in stream.old_epochs:
        return False
    if stream.top >= 0 or stream.epoch:
        _count_lost(stream, stream.holes, out)
        stream.old_epochs = [stream.epoch, *stream.old_epochs][:MAX_OLD_EPOCHS]
    stream.epoch = epoch
    stream.top = -1
    stream.holes = []
    # The remembered lost ranges are numbers of the old stream: a number of the new one
    # is another event and must not take the old stream's loss off the count.
    stream.lost_ranges = []
    return True


def receive(stream: Stream, seqs: list[int], now: float) -> Outcome:
    """Account for the sequence numbers of events just stored (repeats allowed)."""
    out = Outcome()
    for first, hi in merge(seqs):
        if hi <= stream.top:
            _fill(stream, first, hi, out)
            continue
        lo = first
        if lo <= stream.top:
            _fill(stream, lo, stream.top, out)
            lo = stream.top + 1
        if lo > stream.top + 1:
            stream.holes.append([stream.top + 1, lo - 1, now])
        stream.top = hi
    if len(stream.holes) > MAX_HOLES:
        extra = len(stream.holes) - MAX_HOLES
        _count_lost(stream, stream.holes[:extra], out)
        stream.holes = stream.holes[extra:]
    return out


def _fill(stream: Stream, lo: int, hi: int, out: Outcome) -> None:
    stream.holes, _n = _subtract(stream.holes, lo, hi)
    stream.lost_ranges, late = _subtract(stream.lost_ranges, lo, hi)
    if late:
        stream.lost -= late
        stream.late += late
        out.late += late


def age(stream: Stream, now: float, lost_after_s: float) -> Outcome:
    """Count the holes open longer than ``lost_after_s`` as lost."""
    out = Outcome()
    old = [h for h in stream.holes if now - h[2] >= lost_after_s]
    if old:
        stream.holes = [h for h in stream.holes if now - h[2] < lost_after_s]
        _count_lost(stream, old, out)
    return out
