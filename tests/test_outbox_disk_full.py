"""The outbox on a real full disk (a small tmpfs): refused events are counted, the counters
(depth, bytes, sent-unreceipted) stay equal to what the file holds after failed writes and
deletes, and the refused count reaches the file once the disk has room again."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import OutboxError
from agent.link.outbox import Outbox

DEV = "cam-full-1"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          check=False, capture_output=True, text=True, timeout=30)  # fmt: skip
    if made.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the test needs root): {made.stderr}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


def _fill(disk: Path) -> Path:
    """Take every free block of the disk; the file to delete to free them."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(1 << 16):  # bounded: 256 MiB at most
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)
    return filler


def _truth(path: Path) -> tuple[int, int, int]:
    with sqlite3.connect(path) as db:
        rows, size, sent = db.execute(
            "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(sent), 0) FROM messages"
        ).fetchone()
    return int(rows), int(size), int(sent)


def test_full_disk_refuses_counts_and_keeps_counters_true(small_disk: Path) -> None:
    path = small_disk / "outbox.sqlite"
    box = Outbox(path, DEV, 1 << 30, 10**6)
    for i in range(20):
        box.add("track.new", {"i": i, "pad": "x" * 200}, 1.8e9 + i)
    rows = box.pending(0, 100)
    box.mark_sent([r.id for r in rows[:10]])
    filler = _fill(small_disk)
    refused = 0
    for i in range(200):  # until the file cannot grow (WAL and pages eat the last blocks)
        try:
            box.add("track.new", {"i": 100 + i, "pad": "y" * 2000}, 1.8e9)
        except OutboxError:
            refused += 1
            if refused >= 5:
                break
    assert refused >= 5
    assert box.refused() == refused  # counted at once, in memory
    assert (box.depth(), box.size(), box.unreceipted()) == _truth(path)
    # a delete on the full disk: it fails or succeeds; the counters say what the file holds
    before = box.depth()
    with contextlib.suppress(OutboxError):
        box.receipt([[0, 4]])
    assert (box.depth(), box.size(), box.unreceipted()) == _truth(path)
    assert box.depth() in (before, before - 5)
    os.unlink(filler)  # room again
    seq_before = box.next_seq()
    assert box.add("track.new", {"i": 999}, 1.8e9) is not None
    assert box.next_seq() == seq_before + 1  # refused events took no sequence number
    assert box.refused() == refused
    box.close()
    again = Outbox(path, DEV, 1 << 30, 10**6)
    assert again.refused() == refused  # in the file with the first write that succeeded
    assert (again.depth(), again.size(), again.unreceipted()) == _truth(path)
    again.receipt([[0, 9]])
    assert (again.depth(), again.size(), again.unreceipted()) == _truth(path)
    assert again.unreceipted() == 0
    again.close()
