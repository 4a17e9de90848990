"""Health decisions on plain data: online/offline transitions, deadlines, sequence gaps.

No I/O here: the registry feeds values in and writes the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass

ONLINE = "online"
OFFLINE = "offline"
UNKNOWN = "unknown"

REASON_WILL = "connection_lost"
REASON_DEADLINE = "heartbeat_deadline"


def accept_status(current_ts: float, message_ts: float) -> bool:
    """A status message changes the state unless a later-stamped status already did.

    Statuses of one connection (the online message and the last will set before it) carry
    the same ``ts``, the connect time, so the will still applies after the online; a clean
    shutdown is stamped later. A status delayed behind a newer one (another worker, a
    retained redelivery) is ignored. Heartbeats do not move this clock.
    """
    return message_ts >= current_ts


def deadline(last_seen: float, interval_s: float | None, grace: float) -> float | None:
    """When a device with this heartbeat interval counts as gone; None if it never said."""
    if interval_s is None:
        return None
    return last_seen + interval_s * grace


def is_overdue(last_seen: float, interval_s: float | None, grace: float, now: float) -> bool:
    when = deadline(last_seen, interval_s, grace)
    return when is not None and now > when


@dataclass(frozen=True)
class SeqStep:
    duplicate: bool  # the same heartbeat again (QoS 1 redelivery)
    restarted: bool  # the device counts from zero again (new process or boot)
    late: bool  # an older heartbeat of the same run, overtaken by a newer one
    gap: int  # change to the number of heartbeats missing (a late one fills a hole: -1)


def seq_step(
    last_seq: int | None,
    seq: int,
    last_ts: float | None = None,
    ts: float | None = None,
) -> SeqStep:
    """How a heartbeat's sequence number relates to the last one stored.

    Several workers may store one device's heartbeats out of order. A smaller seq stamped
    before the last one (same device clock) is a late arrival of the same run and fills a
    hole; a smaller seq stamped after it is a restart.
    """
    if last_seq is None:
        return SeqStep(duplicate=False, restarted=False, late=False, gap=0)
    if seq == last_seq:
        return SeqStep(duplicate=True, restarted=False, late=False, gap=0)
    if seq < last_seq:
        if last_ts is not None and ts is not None and ts < last_ts:
            return SeqStep(duplicate=False, restarted=False, late=True, gap=-1)
        return SeqStep(duplicate=False, restarted=True, late=False, gap=0)
    return SeqStep(duplicate=False, restarted=False, late=False, gap=seq - last_seq - 1)
