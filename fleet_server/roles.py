"""The fleet server's processes under systemd: ``camfleet-server run --role ...``.

- ``all`` (the demo, tests, a one-box setup): everything in one process;
- ``api`` (``camfleet-server.service``): REST API and dashboard, deadline monitor,
  rollouts, CRL upkeep, OTA serving, and an MQTT connection that only publishes;
- ``ingest`` (``camfleet-ingest@N.service``): one ingest worker of the shared
  subscription, MQTT client id ``<client_id>-ingest-N``;
- ``est`` (``camfleet-est.service``): the EST listener (its worker processes share one
  socket).

``api`` is ``all`` without the EST listener and without taking a share of the devices'
messages; ``ingest`` and ``est`` are the parts it leaves out, each with its Prometheus
metrics on 127.0.0.1 (``role_metrics_port``). Every role brings the schema up to date
first (the API unit runs ``migrate`` before the others start).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from enum import StrEnum
from types import FrameType

from prometheus_client import start_http_server
from sqlalchemy import Engine

from fleet_server.config import ServerSettings
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.health.alerts import AlertBook
from fleet_server.health.notify import Notifier
from fleet_server.identity.api import est_listener
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.identity.enrollment import Enrollment
from fleet_server.ingest.guard_api import broker_kick
from fleet_server.ingest.quarantine import Quarantine
from fleet_server.ingest.registry import Registry
from fleet_server.ingest.runner import Ingest
from fleet_server.metrics import Metrics
from fleet_server.migrate import upgrade

log = logging.getLogger(__name__)


class Role(StrEnum):
    ALL = "all"
    API = "api"
    INGEST = "ingest"
    EST = "est"


def api_settings(settings: ServerSettings) -> ServerSettings:
    """The API process's settings: no EST listener (camfleet-est runs it) and its own MQTT
    client id (its connection only publishes)."""
    return settings.model_copy(
        update={
            "identity": settings.identity.model_copy(update={"est_port": None}),
            "mqtt": settings.mqtt.model_copy(
                update={"client_id": f"{settings.mqtt.client_id}-api"}
            ),
        }
    )


def _until_signalled() -> None:
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    stop.wait()


def _metrics(settings: ServerSettings, offset: int, metrics: Metrics) -> None:
    """Serve the process's metrics; a port taken costs the metrics, never the process."""
    if not settings.role_metrics_port:
        return
    port = settings.role_metrics_port + offset
    try:
        start_http_server(port, "127.0.0.1", registry=metrics.registry)
    except OSError as exc:
        log.error("metrics not served on 127.0.0.1:%d: %s", port, exc)
        return
    log.info("metrics on http://127.0.0.1:%d/metrics", port)


def _worker(settings: ServerSettings, instance: int) -> tuple[Ingest, Notifier, Engine]:
    url = settings.db_url()
    upgrade(url)
    engine = make_engine(url)
    registry = Registry(make_sessionmaker(engine), AlertBook(settings.health.rules))
    metrics = Metrics()
    notifier = Notifier(settings.alerts, metrics)
    mqtt = settings.mqtt.model_copy(
        update={"client_id": f"{settings.mqtt.client_id}-ingest-{instance}"}
    )
    ca = CertificateAuthority(settings.pki_dir)
    quarantine = Quarantine(registry.sessions, broker_kick(settings, ca))  # issue 15
    ingest = Ingest(registry, metrics, ca, mqtt, settings.ingest, notifier,
                    send_receipts=settings.receipts.send, quarantine=quarantine)  # fmt: skip
    return ingest, notifier, engine


def leave_group(settings: ServerSettings, instance: int, quiet_s: float = 2.0) -> int:
    """Scale down: take over the session of ingest worker ``instance`` (stopped before),
    store what the broker queued for it, leave the shared group and end the session
    (docs/operations.md). Returns the messages stored."""
    ingest, notifier, engine = _worker(settings, instance)
    ingest.start()
    try:
        if not ingest.wait_connected(30.0):
            raise SystemExit("camfleet-server: leave-group: broker not reachable")
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < quiet_s:  # until nothing more comes
            now = ingest.taken
            if now != seen:
                seen, quiet_since = now, time.monotonic()
            time.sleep(0.1)
    finally:
        ingest.stop(leave=True)
        notifier.close()
        engine.dispose()
    log.info("ingest worker %d left the group; %d messages stored", instance, ingest.taken)
    return ingest.taken


def serve_ingest(settings: ServerSettings, instance: int) -> None:
    """One ingest worker until SIGTERM: it stores and acknowledges what it holds and
    disconnects keeping its session, so that the broker queues its share until it is back
    (docs/operations.md; ``leave-group`` ends the session for good)."""
    ingest, notifier, engine = _worker(settings, instance)
    metrics = ingest.metrics
    mqtt = ingest.cfg
    _metrics(settings, instance, metrics)
    ingest.start()
    log.info("ingest worker %d as %s", instance, mqtt.client_id)
    try:
        _until_signalled()
    finally:
        ingest.stop()
        notifier.close()
        engine.dispose()
        log.info("ingest worker %d stopped", instance)


def serve_est(settings: ServerSettings) -> None:
    """The EST listener until SIGTERM."""
    if settings.identity.est_port is None:
        raise SystemExit("camfleet-server: --role est needs [identity] est_port")
    url = settings.db_url()
    upgrade(url)
    engine = make_engine(url)
    ca = CertificateAuthority(settings.pki_dir)
    metrics = Metrics()
    enrollment = Enrollment(make_sessionmaker(engine), ca, settings.identity)
    listener = est_listener(settings, ca, metrics, enrollment)
    assert listener is not None  # est_port is set
    _metrics(settings, 0, metrics)
    listener.start()
    try:
        _until_signalled()
    finally:
        listener.stop()
        engine.dispose()
        log.info("EST listener stopped")
