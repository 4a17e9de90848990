"""A province's worth of sites around Bắc Ninh, for the demo, the dashboard tests and the
bench: sites at real-looking positions, commissioning records tying devices to them, a day
of traffic counts with a morning and an evening peak, snapshots (small JPEGs), certificates
(one about to expire), and heartbeats through the real registry (``Registry.apply``).

Rows are written straight into the server's database, as ingest and commissioning would
store them (the commissioning records carry no signature: they stand for the technician's
visits, not for the signed records ``sites/records.py`` checks)."""

from __future__ import annotations

import base64
import math
import random
import time
from collections.abc import Sequence

import cv2
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from firmware import contract
from fleet_server.health.alerts import AlertBook
from fleet_server.health.rules import RuleThresholds
from fleet_server.identity.model import Commissioning, IssuedCertificate, Site
from fleet_server.ingest.events import Event
from fleet_server.ingest.registry import Accepted, Registry

# (site id, name, latitude, longitude): crossings, bridges and gates of Bắc Ninh province
SITES: list[tuple[str, str, float, float]] = [
    ("bn-ly-thai-to", "Ngã tư Lý Thái Tổ - Nguyễn Văn Cừ", 21.1801, 106.0712),
    ("bn-dap-cau", "Cầu Đáp Cầu", 21.2075, 106.0869),
    ("bn-ninh-xa", "Ngã tư Ninh Xá", 21.1752, 106.0601),
    ("bn-kinh-bac", "Đại lộ Kinh Bắc - Trần Hưng Đạo", 21.1862, 106.0780),
    ("bn-vo-cuong", "Nút giao Võ Cường", 21.1643, 106.0505),
    ("bn-suoi-hoa", "Phường Suối Hoa - Hồ Ngọc Lân", 21.1875, 106.0662),
    ("bn-dai-phuc", "Cổng chợ Đại Phúc", 21.1772, 106.0843),
    ("bn-ql18-vang", "QL18 - Nút giao Vạn An", 21.1982, 106.0531),
    ("bn-kcn-que-vo-1", "KCN Quế Võ - Cổng 1", 21.1461, 106.1468),
    ("bn-kcn-que-vo-2", "KCN Quế Võ - Cổng 2", 21.1412, 106.1553),
    ("bn-que-vo-tt", "Thị trấn Phố Mới, Quế Võ", 21.1531, 106.1587),
    ("bn-ql18-que-vo", "QL18 - Phượng Mao", 21.1332, 106.1305),
    ("bn-tu-son-ql1", "QL1A - Từ Sơn", 21.1190, 105.9600),
    ("bn-tu-son-dinh", "Ngã tư Đình Bảng", 21.1053, 105.9507),
    ("bn-tu-son-ga", "Ga Từ Sơn", 21.1175, 105.9661),
    ("bn-vsip-1", "VSIP Bắc Ninh - Cổng chính", 21.1092, 106.0124),
    ("bn-tien-du-lim", "Thị trấn Lim, Tiên Du", 21.1398, 106.0211),
    ("bn-tien-du-ql38", "QL38 - Tiên Du", 21.1281, 106.0379),
    ("bn-kcn-tien-son", "KCN Tiên Sơn - Cổng 2", 21.1121, 105.9988),
    ("bn-yen-phong-tt", "Thị trấn Chờ, Yên Phong", 21.2067, 105.9538),
    ("bn-kcn-yen-phong-1", "KCN Yên Phong - Cổng 1", 21.2205, 105.9762),
    ("bn-kcn-yen-phong-2", "KCN Yên Phong - Samsung", 21.2259, 105.9853),
    ("bn-yen-phong-ql3", "QL3 mới - Yên Phong", 21.2380, 105.9420),
    ("bn-thuan-thanh-tt", "Thị trấn Hồ, Thuận Thành", 21.0590, 106.0836),
    ("bn-thuan-thanh-ql38", "QL38 - Thuận Thành", 21.0712, 106.0659),
    ("bn-but-thap", "Chùa Bút Tháp", 21.0811, 106.0929),
    ("bn-gia-binh-tt", "Thị trấn Gia Bình", 21.0548, 106.1861),
    ("bn-gia-binh-ql17", "ĐT285 - Gia Bình", 21.0651, 106.1667),
    ("bn-luong-tai-tt", "Thị trấn Thứa, Lương Tài", 21.0202, 106.2174),
    ("bn-luong-tai-281", "ĐT281 - Lương Tài", 21.0350, 106.1990),
    ("bn-cau-binh-than", "Cầu Bình Than", 21.0911, 106.2323),
    ("bn-ql1-ha-noi", "QL1A - Cửa ngõ Hà Nội", 21.0990, 105.9398),
    ("bn-hoan-son", "Nút giao Hoàn Sơn", 21.1349, 106.0013),
    ("bn-hap-linh", "Cầu Hạp Lĩnh", 21.1535, 106.0899),
    ("bn-khuc-xuyen", "Khúc Xuyên - Đường Lê Thái Tổ", 21.1950, 106.0611),
    ("bn-phong-khe", "Phong Khê - ĐT295", 21.2049, 106.0347),
    ("bn-nam-son", "Nam Sơn - Đồi Lim", 21.1585, 106.1043),
    ("bn-van-duong", "Vân Dương - QL18", 21.1648, 106.1112),
    ("bn-dong-ngan", "Đồng Nguyên - Từ Sơn", 21.1264, 105.9778),
    ("bn-chau-khe", "Châu Khê - Làng nghề thép", 21.1190, 105.9420),
]
CLASSES = ("car", "motorcycle", "truck", "bus", "bicycle", "person")
# vehicles per hour at a busy urban crossing, by class, at the day's peak
PEAK = {"car": 180, "motorcycle": 900, "truck": 40, "bus": 12, "bicycle": 30, "person": 60}


def registry(sessions: sessionmaker[Session]) -> Registry:
    return Registry(sessions, AlertBook(RuleThresholds()))


def accepted(kind: str, device: str, body: dict[str, object], at: float) -> Accepted:
    topic, payload, _q, _r = contract.encode(kind, device, body, at)
    return Accepted(*contract.decode(topic, payload), at)


def heartbeat(device: str, at: float, interval_s: float, **fields: object) -> Accepted:
    body = {"seq": int(at) % 1_000_000, "kind": "agent", "interval_s": interval_s,
            "uptime_s": 3600.0, "cpu_pct": 20.0, "temp_c": 48.0,
            "versions": {"agent": "0.3.0", "model": "ssd-mobilenet-v2"}, **fields}  # fmt: skip
    return accepted("heartbeat", device, body, at)


def tiny_jpeg(seed: int) -> bytes:
    """A small picture of a vehicle-ish box on a road (a real JPEG)."""
    rng = np.random.default_rng(seed)
    img = np.full((72, 96, 3), (70, 72, 74), np.uint8)
    img[30:34, :, :] = 220  # a lane marking
    colour = tuple(int(c) for c in rng.integers(40, 230, 3))
    x = int(rng.integers(8, 50))
    cv2.rectangle(img, (x, 18), (x + 36, 50), colour, -1)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 70])
    assert ok
    return bytes(buf)


def diurnal(hour: float) -> float:
    """0..1: a morning peak at 7:30 and an evening peak at 17:30 (local hours)."""
    return 0.12 + 0.88 * max(
        math.exp(-((hour - 7.5) ** 2) / 3), math.exp(-((hour - 17.5) ** 2) / 4)
    )


def seed_sites(
    sessions: sessionmaker[Session], devices: Sequence[str], now: float | None = None,
    sites: Sequence[tuple[str, str, float, float]] = SITES,
) -> dict[str, str]:  # fmt: skip
    """Sites, and each device commissioned at one (round robin): device -> site id."""
    now = time.time() if now is None else now
    placed = {d: sites[i % len(sites)][0] for i, d in enumerate(devices)}
    with sessions.begin() as db:
        known = set(db.scalars(select(Site.site_id)).all())
        for site_id, name, lat, lon in sites:
            if site_id not in known:
                db.add(Site(site_id=site_id, name=name, lat=lat, lon=lon, updated_at=now))
        db.flush()
        done = set(db.scalars(select(Commissioning.device_id)).all())
        for i, (device, site_id) in enumerate(placed.items()):
            if device in done:
                continue
            db.add(Commissioning(
                record_id=f"seed-{device}", device_id=device, site_id=site_id,
                record={"seeded": True}, signature="", certificate_serial="",
                reference_frame=None, submitted_by=("tech-lan", "tech-minh", "tech-hoa")[i % 3],
                received_at=now - 86400 * (3 + i % 20),
            ))  # fmt: skip
    return placed


def seed_counts(
    sessions: sessionmaker[Session], devices: Sequence[str], hours: int = 24,
    now: float | None = None, every_s: float = 3600, seed: int = 19,
) -> int:  # fmt: skip
    """A ``counts`` event per device per interval over the last ``hours``, as the agent's
    counter sends them (``start_ts``, ``end_ts``, lines by class and direction, zones)."""
    now = time.time() if now is None else now
    rng = random.Random(seed)
    rows = []
    for device in devices:
        scale = rng.uniform(0.2, 1.0)
        end = now - now % every_s
        for k in range(int(hours * 3600 / every_s)):
            stop = end - k * every_s
            start = stop - every_s
            local_hour = (stop / 3600 + 7) % 24  # UTC+7
            per: dict[str, dict[str, int]] = {}
            for cls in CLASSES:
                mean = PEAK[cls] * scale * diurnal(local_hour) * every_s / 3600
                n_in = max(0, int(rng.gauss(mean, mean**0.5 + 0.1)))
                n_out = max(0, int(rng.gauss(mean * 0.9, mean**0.5 + 0.1)))
                per[cls] = {"in": n_in, "out": n_out}
            data = {"start_ts": start, "end_ts": stop, "lines": {"stop-line": per},
                    "zones": {"crosswalk": {"person": per["person"]["in"]}}}  # fmt: skip
            rows.append(Event(event_id=f"seed-c-{int(stop)}", device_id=device, seq=k,
                              type="counts", ts=stop, received_at=stop + 1, data=data))  # fmt: skip
    return _add_new(sessions, rows)


def _add_new(sessions: sessionmaker[Session], rows: list[Event]) -> int:
    """Add the events not stored yet (a demo started again on its old state)."""
    with sessions.begin() as db:
        have = set(db.execute(select(Event.device_id, Event.event_id).where(
            Event.event_id.like("seed-%"))).tuples().all())  # fmt: skip
        new = [r for r in rows if (r.device_id, r.event_id) not in have]
        db.add_all(new)
    return len(new)


def seed_snapshots(
    sessions: sessionmaker[Session], devices: Sequence[str], now: float | None = None
) -> int:
    now = time.time() if now is None else now
    rows = []
    for i, device in enumerate(devices):
        for j in range(2):
            ts = now - 60 * (5 + 17 * i + 240 * j)
            jpeg = base64.b64encode(tiny_jpeg(i * 7 + j)).decode("ascii")
            label = CLASSES[(i + j) % 4]
            data = {"track": j, "label": label, "score": 0.8, "jpeg": jpeg}
            rows.append(Event(event_id=f"seed-s-{i}-{j}", device_id=device, seq=10_000 + j,
                              type="snapshot", ts=ts, received_at=ts + 1, data=data))  # fmt: skip
    return _add_new(sessions, rows)


def seed_certificates(
    sessions: sessionmaker[Session], devices: Sequence[str], expiring: Sequence[str] = (),
    now: float | None = None,
) -> None:  # fmt: skip
    now = time.time() if now is None else now
    with sessions.begin() as db:
        have = set(db.scalars(select(IssuedCertificate.serial)).all())
        for i, device in enumerate(devices):
            if f"5eed{i:08x}" in have:
                continue
            days = 5 if device in expiring else 300 + i % 60
            db.add(IssuedCertificate(serial=f"5eed{i:08x}", device_id=device,
                                     not_before=now - 86400 * 60, not_after=now + days * 86400,
                                     issued_at=now - 86400 * 60, via="enroll"))  # fmt: skip
