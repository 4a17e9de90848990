"""The fleet server process: migrations, ingest, the heartbeat-deadline monitor, the API."""

from __future__ import annotations

import contextlib
import logging
import signal
import urllib.parse
from collections.abc import Callable, Generator

import uvicorn

from fleet_server.api import create_app
from fleet_server.config import ServerSettings
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.features import ServerContext, routers
from fleet_server.health.alerts import AlertBook
from fleet_server.health.notify import Notifier
from fleet_server.health.runner import DeadlineMonitor
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.identity.ca_ops import EST_KEY, ensure_est_cert
from fleet_server.ingest.guard_api import broker_kick
from fleet_server.ingest.quarantine import Quarantine
from fleet_server.ingest.registry import Registry
from fleet_server.ingest.runner import Ingest
from fleet_server.metrics import Metrics
from fleet_server.migrate import upgrade
from fleet_server.privacy.runner import RetentionRunner
from fleet_server.receipts.runner import LossMonitor
from fleet_server.roles import Role, api_settings, serve_est, serve_ingest
from fleet_server.rollouts.runner import RolloutRunner

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its shutdown, which would kill the process before
    ingest drains and acks; here the signal only asks the server to exit."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _tls(settings: ServerSettings, ca: CertificateAuthority) -> tuple[str | None, str | None]:
    """The API's HTTPS certificate and key: the configured ones, else the fleet CA's server
    certificate for the broker's names (made here when missing); (None, None): plain HTTP."""
    api = settings.api
    if not api.tls:
        return None, None
    if api.tls_cert is not None and api.tls_key is not None:
        return str(api.tls_cert), str(api.tls_key)
    return str(ensure_est_cert(ca, settings.broker.hosts)), str(ca.dir / EST_KEY)


def csp_img_src(settings: ServerSettings) -> list[str]:
    """Image origins the dashboard's CSP allows besides its own: ``[api] csp_img_src`` and
    the origin of ``[dashboard] tiles_url`` (the province's tile server), when set."""
    extra = list(settings.api.csp_img_src)
    tiles = urllib.parse.urlsplit(settings.dashboard.tiles_url)
    if tiles.scheme in ("http", "https") and tiles.netloc:
        extra.append(f"{tiles.scheme}://{tiles.netloc}")
    return extra


def serve(settings: ServerSettings, role: Role = Role.ALL, instance: int = 1) -> None:
    """Run the server (``role`` all), or one of its processes (fleet_server/roles.py)."""
    if role is Role.INGEST:
        serve_ingest(settings, instance)
        return
    if role is Role.EST:
        serve_est(settings)
        return
    if role is Role.API:
        settings = api_settings(settings)
    url = settings.db_url()
    upgrade(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    registry = Registry(sessions, AlertBook(settings.health.rules))
    metrics = Metrics()
    notifier = Notifier(settings.alerts, metrics)
    ca = CertificateAuthority(settings.pki_dir)
    quarantine = Quarantine(sessions, broker_kick(settings, ca))  # issue 15
    ingest = Ingest(registry, metrics, ca, settings.mqtt, settings.ingest, notifier,
                    subscribe=role is Role.ALL, send_receipts=settings.receipts.send,
                    quarantine=quarantine)  # fmt: skip
    ctx = ServerContext(settings, engine, sessions, registry, metrics, ca, notifier, ingest.send,
                        quarantine)  # fmt: skip
    monitor = DeadlineMonitor(
        registry, metrics, notifier, settings.health.heartbeat_grace,
        settings.health.check_interval_s,
    )  # fmt: skip

    losses = LossMonitor(sessions, metrics, notifier, settings.receipts)

    def announce() -> Callable[[bytes], None] | None:  # campaign halts on the alerts topic
        return notifier.publish if settings.alerts.publish_mqtt else None

    rollouts = RolloutRunner(sessions, ingest.send, settings.rollouts, announce)
    ingest.start()
    monitor.start()
    losses.start()
    rollouts.start()
    retention = RetentionRunner(sessions, settings.privacy)  # issue 20: per-site retention
    retention.start()
    # issue 15: these loops too are started again if they die (ingest/supervisor.py)
    ingest.supervise(monitor, rollouts, retention, losses)
    link_down_s = settings.ingest.healthz_link_down_s
    app = create_app(registry, metrics, routers(ctx), health=lambda: ingest.problem(link_down_s),
                     img_src=csp_img_src(settings))  # fmt: skip
    cert, key = _tls(settings, ca)
    server = _Server(
        uvicorn.Config(
            app,
            host=settings.api.host,
            port=settings.api.port,
            log_level=settings.log_level.lower(),
            access_log=False,
            ssl_certfile=cert,
            ssl_keyfile=key,
        )
    )
    scheme = "https" if cert else "http"
    log.info("API on %s://%s:%s/api/devices", scheme, settings.api.host, settings.api.port)
    try:
        server.run()  # returns on SIGINT/SIGTERM
    finally:
        ingest.supervisor.stopped.set()  # nothing stopping below is started again
        monitor.stopped.set()
        losses.stopped.set()
        rollouts.stopped.set()
        retention.stopped.set()
        ingest.stop()
        notifier.close()
        engine.dispose()
        log.info("fleet server stopped")
