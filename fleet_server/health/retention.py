"""Health history: raw heartbeats for a day, then hourly roll-ups (count, min, mean, max of
every numeric reading), so a year of a 10,000-camera fleet stays small.

``rollup`` is a pure function on rows; ``compact`` moves one batch of old raw heartbeats
into roll-ups and deletes them in one transaction (nothing is lost if it stops half way:
either both happened or neither).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import JSON, Float, Integer, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from fleet_server.db import Base, Heartbeat

RAW_KEEP_S = 24 * 3600
BUCKET_S = 3600
# readings worth keeping in the long history
FIELDS = (
    "cpu_pct", "load1", "mem_used_pct", "mem_free", "disk_used_pct", "temp_c", "rssi", "fps",
    "infer_ms", "outbox", "brightness", "sharpness",
)  # fmt: skip


class HealthRollup(Base):
    __tablename__ = "health_rollups"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket: Mapped[float] = mapped_column(Float, primary_key=True)  # start, unix seconds
    count: Mapped[int] = mapped_column(Integer)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)  # field -> [n, min, mean, max]


def bucket_of(ts: float, size: float = BUCKET_S) -> float:
    return float(int(ts // size) * size)


def rollup(
    rows: Iterable[tuple[str, float, dict[str, Any]]], size: float = BUCKET_S
) -> dict[tuple[str, float], tuple[int, dict[str, list[float]]]]:
    """(device, ts, body) rows -> {(device, bucket): (count, {field: [n, min, mean, max]})}."""
    acc: dict[tuple[str, float], dict[str, list[float]]] = defaultdict(dict)
    counts: dict[tuple[str, float], int] = defaultdict(int)
    for device_id, ts, body in rows:
        key = (device_id, bucket_of(ts, size))
        counts[key] += 1
        for name in FIELDS:
            value = body.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            v = float(value)
            cur = acc[key].get(name)
            if cur is None:
                acc[key][name] = [1.0, v, v, v]
            else:
                n = cur[0] + 1
                cur[:] = [n, min(cur[1], v), cur[2] + (v - cur[2]) / n, max(cur[3], v)]
    return {key: (counts[key], acc[key]) for key in counts}


def merge(
    old: tuple[int, dict[str, list[float]]], new: tuple[int, dict[str, list[float]]]
) -> tuple[int, dict[str, list[float]]]:
    """Two roll-ups of the same bucket (a bucket compacted in two batches)."""
    stats = {k: list(v) for k, v in old[1].items()}
    for name, (n2, lo2, mean2, hi2) in new[1].items():
        if name not in stats:
            stats[name] = [n2, lo2, mean2, hi2]
            continue
        n1, lo1, mean1, hi1 = stats[name]
        n = n1 + n2
        stats[name] = [n, min(lo1, lo2), (mean1 * n1 + mean2 * n2) / n, max(hi1, hi2)]
    return old[0] + new[0], stats


def compact(db: Session, now: float, batch: int = 5000, keep_s: float = RAW_KEEP_S) -> int:
    """Roll up and delete up to ``batch`` raw heartbeats older than ``keep_s``; how many."""
    cutoff = now - keep_s
    rows = db.execute(
        select(Heartbeat.id, Heartbeat.device_id, Heartbeat.ts, Heartbeat.body)
        .where(Heartbeat.ts < cutoff)
        .order_by(Heartbeat.ts)
        .limit(batch)
    ).all()
    if not rows:
        return 0
    for (device_id, bucket), new in rollup((r[1], r[2], r[3]) for r in rows).items():
        cur = db.get(HealthRollup, (device_id, bucket), with_for_update=True)
        if cur is None:
            db.add(HealthRollup(device_id=device_id, bucket=bucket, count=new[0], stats=new[1]))
        else:
            cur.count, cur.stats = merge((cur.count, cur.stats), new)
    db.execute(delete(Heartbeat).where(Heartbeat.id.in_([r[0] for r in rows])))
    return len(rows)
