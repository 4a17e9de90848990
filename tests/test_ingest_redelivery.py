"""Ingest across a broker restart in the middle of a batch: what was received but not yet
acknowledged comes again, nothing is lost and nothing is stored twice."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import func, select

from firmware import contract
from fleet_server.config import IngestSettings, MqttSettings, ServerSettings
from fleet_server.db import Heartbeat, make_engine, make_sessionmaker
from fleet_server.health.alerts import AlertBook
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from fleet_server.ingest.registry import Accepted, ApplyStats, Registry
from fleet_server.ingest.runner import Ingest
from fleet_server.metrics import Metrics
from fleet_server.migrate import upgrade
from hil_tests.procs import Broker, wait_for
from tests.mqtt_helpers import Client

N = 300
DEVICE = "redeliver-01"


class GatedRegistry(Registry):
    """The real registry, held at its first batch until the test lets it go: the batch
    commits after its connection is gone, so its acknowledgements can never reach the
    broker (the seam is the ingest's registry; the store itself is real)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches = 0

    def apply(self, batch: Sequence[Accepted]) -> ApplyStats:
        self.batches += 1
        if self.batches == 1:
            self.entered.set()
            self.release.wait(60)
        return super().apply(batch)


@pytest.fixture
def own_broker(ca: CertificateAuthority, tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(ca, tmp_path / "broker").start()  # restarted by the test: not shared
    yield broker
    broker.stop()


def _count(registry: Registry) -> tuple[int, int]:
    with registry.sessions() as db:
        rows = db.execute(
            select(func.count(), func.count(func.distinct(Heartbeat.seq))).where(
                Heartbeat.device_id == DEVICE
            )
        ).one()
    return int(rows[0]), int(rows[1])


def test_broker_restart_mid_batch_loses_nothing_stores_nothing_twice(
    own_broker: Broker,
    ca: CertificateAuthority,
    device_factory: Callable[[str], DeviceCredentials],
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    upgrade(url)
    registry = GatedRegistry(make_sessionmaker(make_engine(url)),
                             AlertBook(ServerSettings().health.rules))  # fmt: skip
    metrics = Metrics()
    ingest = Ingest(
        registry, metrics, ca,
        MqttSettings(host="localhost", port=own_broker.port, client_id="redeliver-worker",
                     keepalive_s=5),
        IngestSettings(batch_size=50, batch_ms=20),
    )  # fmt: skip
    creds = device_factory(DEVICE)
    ingest.start()
    try:
        assert ingest.wait_connected(10)
        time.sleep(0.3)  # the SUBACK
        dev = Client(own_broker.port, ca.root_cert_path, creds.cert_pem, creds.key_pem)
        for seq in range(N):
            body = {"seq": seq, "kind": "agent", "interval_s": 30, "uptime_s": seq}
            topic, payload, qos, _r = contract.encode("heartbeat", DEVICE, body, 1.8e9 + seq)
            dev.publish(topic, payload, qos)
        dev.close()
        assert registry.entered.wait(20), "no batch reached the registry"
        generation = ingest.client.generation
        own_broker.stop()  # persistence on: the session and its unacked messages are saved
        wait_for(lambda: not ingest.client.connected.is_set(), 10, what="ingest sees the loss")
        own_broker.start()
        wait_for(lambda: ingest.client.generation > generation, 20, what="ingest reconnects")
        registry.release.set()  # the first batch commits now; its acks are for a dead link
        wait_for(lambda: _count(registry)[1] == N, 30, what=f"all {N} heartbeats stored")
        time.sleep(1.0)  # let any further redelivery arrive
        total, distinct = _count(registry)
        assert (total, distinct) == (N, N)  # every seq once, none twice
        received = sum(s.value for m in metrics.received.collect() for s in m.samples
                       if s.name.endswith("_total"))  # fmt: skip
        assert received > N, "the broker sent nothing again: the test did not test redelivery"
    finally:
        registry.release.set()
        ingest.stop(drain_s=5)
