"""Supervised ingest threads (issue 15): a thread whose work is killed from outside is
started again and nothing it held is lost; one that keeps dying ends the process; the
health check says so, and says when the MQTT link has been down too long.

The threads are killed the hard way: an exception raised inside them by the interpreter
(``PyThreadState_SetAsyncExc``), wherever they happen to be, with a real broker and a real
database under them. No code path of the ingest is told about it.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from firmware import contract
from fleet_server.api import create_app
from fleet_server.config import IngestSettings, MqttSettings, ServerSettings
from fleet_server.db import Heartbeat, make_engine, make_sessionmaker
from fleet_server.health.alerts import AlertBook
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from fleet_server.ingest.registry import Registry
from fleet_server.ingest.runner import Ingest
from fleet_server.metrics import Metrics
from fleet_server.migrate import upgrade
from hil_tests.procs import Broker, wait_for
from tests.mqtt_helpers import Client


class Killed(BaseException):  # not caught by the broad "except Exception" of the loops
    """Raised inside an ingest thread by the test."""


def kill(thread: threading.Thread | None) -> None:
    assert thread is not None and thread.ident is not None and thread.is_alive()
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(Killed)
    )
    assert done == 1
    wait_for(lambda: not thread.is_alive(), 10, what=f"{thread.name} to die")


@pytest.fixture
def own_broker(ca: CertificateAuthority, tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(ca, tmp_path / "broker").start()  # stopped by a test: not shared
    yield broker
    broker.stop()


def _ingest(broker: Broker, ca: CertificateAuthority, tmp_path: Path) -> tuple[Ingest, Registry]:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    upgrade(url)
    registry = Registry(make_sessionmaker(make_engine(url)),
                        AlertBook(ServerSettings().health.rules))  # fmt: skip
    ingest = Ingest(
        registry, Metrics(), ca,
        MqttSettings(host="localhost", port=broker.port, client_id="supervised-worker",
                     keepalive_s=5),
        IngestSettings(batch_size=20, batch_ms=20, thread_restarts_max=3),
    )  # fmt: skip
    ingest.supervisor.every_s = 0.1
    return ingest, registry


def _stored(registry: Registry, device: str) -> int:
    with registry.sessions() as db:
        q = select(func.count()).select_from(Heartbeat).where(Heartbeat.device_id == device)
        return int(db.scalar(q) or 0)


def _send(dev: Client, device: str, seqs: range) -> None:
    for seq in seqs:
        body = {"seq": seq, "kind": "agent", "interval_s": 30, "uptime_s": float(seq)}
        topic, payload, qos, _r = contract.encode("heartbeat", device, body, 1.8e9 + seq)
        dev.publish(topic, payload, qos)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_killed_threads_come_back_and_lose_nothing(
    own_broker: Broker,
    ca: CertificateAuthority,
    device_factory: Callable[[str], DeviceCredentials],
    tmp_path: Path,
) -> None:
    device = "supervised-01"
    ingest, registry = _ingest(own_broker, ca, tmp_path)
    fatal: list[str] = []
    ingest.supervisor.on_fatal = fatal.append
    creds = device_factory(device)
    ingest.start()
    dev: Client | None = None
    try:
        assert ingest.wait_connected(10)
        time.sleep(0.3)  # the SUBACK
        dev = Client(own_broker.port, ca.root_cert_path, creds.cert_pem, creds.key_pem)
        sent = 0
        for round_ in range(2):
            writer, io = ingest.supervisor.watched[0], ingest.client
            kill(writer.thread)
            _send(dev, device, range(sent, sent + 50))  # arrive while no writer runs
            sent += 50
            wait_for(writer.alive, 5, what="the writer started again")
            kill(io._thread)  # the thread the client owns
            _send(dev, device, range(sent, sent + 50))
            sent += 50
            wait_for(lambda: io.alive() and io.connected.is_set(), 10,  # noqa: B023
                     what="MQTT back")  # fmt: skip
            wait_for(lambda: _stored(registry, device) == sent, 20,  # noqa: B023
                     what=f"round {round_}: all {sent} heartbeats stored")  # fmt: skip
        restarts = {
            s.labels["thread"]: s.value
            for m in ingest.metrics.thread_restarts.collect()
            for s in m.samples
            if s.name.endswith("_total")
        }
        assert restarts == {"ingest-writer": 2.0, "mqtt5-io": 2.0}
        assert fatal == [] and ingest.problem(30.0) is None
        # a thread that dies again and again: the supervisor gives up, health says so
        for _ in range(3):  # two restarts so far; the third in a minute is the last
            w = ingest.supervisor.watched[0]
            wait_for(lambda: w.alive() or bool(fatal), 5, what="the writer")  # noqa: B023
            if fatal:
                break
            kill(w.thread)
        wait_for(lambda: bool(fatal), 5, what="the supervisor gives up")
        assert "ingest-writer died" in fatal[0]
        assert ingest.problem(30.0) == fatal[0]
        app = create_app(ingest.registry, ingest.metrics,
                         health=lambda: ingest.problem(30.0))  # fmt: skip
        got = TestClient(app).get("/healthz")
        assert got.status_code == 503 and "ingest-writer died" in got.json()["problem"]
    finally:
        if dev is not None:
            dev.close()
        ingest.stop(drain_s=2)


def test_health_turns_503_while_the_link_is_down(
    own_broker: Broker, ca: CertificateAuthority, tmp_path: Path
) -> None:
    ingest, _registry = _ingest(own_broker, ca, tmp_path)
    app = TestClient(create_app(ingest.registry, ingest.metrics,
                                health=lambda: ingest.problem(1.0)))  # fmt: skip
    ingest.start()
    try:
        assert ingest.wait_connected(10)
        assert app.get("/healthz").status_code == 200
        own_broker.stop()
        wait_for(lambda: app.get("/healthz").status_code == 503, 10, what="503")
        assert "MQTT link down" in app.get("/healthz").json()["problem"]
        own_broker.start()
        wait_for(lambda: app.get("/healthz").status_code == 200, 15, what="200 again")
    finally:
        ingest.stop(drain_s=2)
