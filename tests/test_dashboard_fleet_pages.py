"""The device page's site, certificate and events sections,
rendered from a real database (rows as commissioning, enrollment and ingest store them)."""

from __future__ import annotations

import time

import pytest

from firmware import contract
from fleet_server.dashboard import fleet_pages
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.health.alerts import AlertBook
from fleet_server.health.rules import RuleThresholds
from fleet_server.identity.model import Commissioning, IssuedCertificate, Site
from fleet_server.ingest.events import Event
from fleet_server.ingest.registry import Accepted, Registry
from fleet_server.migrate import upgrade


@pytest.fixture
def registry(database_url: str) -> Registry:
    upgrade(database_url)
    return Registry(make_sessionmaker(make_engine(database_url)), AlertBook(RuleThresholds()))


def _beat(device: str, at: float, **fields: object) -> Accepted:
    body = {"seq": 0, "kind": "agent", "interval_s": 30, "uptime_s": 1.0, **fields}
    topic, payload, _q, _r = contract.encode("heartbeat", device, body, at)
    return Accepted(*contract.decode(topic, payload), at)


def _fleet(registry: Registry) -> float:
    now = time.time()
    registry.apply([_beat("cam-north", now), _beat("cam-south", now)])
    body = {"state": "offline", "kind": "agent", "reason": "shutdown"}
    topic, payload, _q, _r = contract.encode("status", "cam-south", body, now + 1)
    registry.apply([Accepted(*contract.decode(topic, payload), now + 1)])
    with registry.sessions.begin() as db:
        db.add_all([
            Site(site_id="gate-n", name="North gate", lat=45.07, lon=7.68, updated_at=now),
            Site(site_id="gate-s", name="South gate", lat=45.02, lon=7.66, updated_at=now),
        ])  # fmt: skip
        db.flush()
        for dev, site in (("cam-north", "gate-n"), ("cam-south", "gate-s")):
            db.add(Commissioning(record_id=f"r-{dev}", device_id=dev, site_id=site, record={},
                                 signature="sig", certificate_serial="ab", reference_frame=None,
                                 submitted_by="tech-ben", received_at=now))  # fmt: skip
        cert = IssuedCertificate(
            serial="0abc", device_id="cam-north", not_before=now, not_after=now + 20 * 86400,
            issued_at=now, via="enroll",
        )  # fmt: skip
        db.add(cert)
        for i, n in enumerate((3, 4)):
            data = {"lines": {"stop-line": {"Car": {"in": n, "out": 1}}},
                    "zones": {"crossing": {"Person": 2}}}  # fmt: skip
            db.add(Event(event_id=f"cam-north-c{i}", device_id="cam-north", seq=i, type="counts",
                         ts=now - 60 * i, received_at=now, data=data))  # fmt: skip
        db.add(Event(event_id="cam-north-s1", device_id="cam-north", seq=9, type="snapshot",
                     ts=now, received_at=now, data={"jpeg": "/9j/", "label": "Car"}))  # fmt: skip
    return now


def test_device_sections_show_site_certificate_and_snapshot(registry: Registry) -> None:
    _fleet(registry)
    with registry.sessions() as db:
        site = fleet_pages.site_section(db, "cam-north")
        cert = fleet_pages.certificate_section(db, "cam-north")
        events = fleet_pages.events_section(db, "cam-north")
        none = fleet_pages.certificate_section(db, "cam-south")
    assert site is not None and "North gate" in site.html and "tech-ben" in site.html
    assert cert is not None and "20 days left" in cert.html
    assert events is not None and "/api/events/cam-north-s1/snapshot.jpg" in events.html
    assert none is None  # no certificate from enrollment: no section
