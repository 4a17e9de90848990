"""Each fleet server worker's own MQTT identity: a certificate whose CN is its client id.

The broker makes every connection's client id its certificate's CN
(``use_username_as_clientid``), so two connections cannot share a certificate without
taking each other's session over: every worker (``[mqtt] client_id``, e.g.
``fleet-server-1``, ``fleet-server-1-ingest-2``) connects with its own certificate, CN
``_<client id>``, and the dynamic-security administration of a process with one more,
``_<client id>-admin``. The leading ``_`` keeps server identities out of the device-id space
(a device id is ``[a-z0-9-]``): no device certificate can ever carry one, and the broker's
``camfleet_acl`` plugin treats ``_``-prefixed users as the server.

The certificates are issued by the fleet's issuing CA (``pki_dir/servers/<cn>.pem``, key
mode 0600), live ``[identity] cert_days`` like a device's, and are renewed at two thirds of
their life: ``ensure`` at start, and ``Renewer`` (a thread) for a long-running worker,
which loads the new certificate into the live TLS context (new connections use it).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from pathlib import Path

from cryptography import x509

from fleet_server.identity.ca import CertificateAuthority

log = logging.getLogger(__name__)

RENEW_AT = 2 / 3  # of the certificate's life, as devices do


def server_cn(client_id: str) -> str:
    """The certificate CN (= broker client id) of a server connection (the same rule as
    ``fleet_server.broker.conf.server_client_ids``)."""
    return client_id if client_id.startswith("_") else "_" + client_id


def _paths(ca: CertificateAuthority, cn: str) -> tuple[Path, Path]:
    base = ca.dir / "servers"
    return base / f"{cn}.pem", base / f"{cn}.key"


def _due(cert_path: Path, now: float) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return True
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    return now >= start + (end - start) * RENEW_AT


def ensure(ca: CertificateAuthority, client_id: str, days: float = 30.0) -> tuple[Path, Path]:
    """The (certificate, key) of this server connection, issued or renewed when due."""
    cn = server_cn(client_id)
    cert_path, key_path = _paths(ca, cn)
    if _due(cert_path, time.time()):
        ca.issue_server_identity(cn, cert_path, key_path, days)
        log.info("server identity %s issued (%s days)", cn, days)
    return cert_path, key_path


def client_context(ca: CertificateAuthority, client_id: str, days: float = 30.0) -> ssl.SSLContext:
    """A TLS client context for the broker with this connection's own certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca.root_cert_path))
    cert, key = ensure(ca, client_id, days)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class Renewer(threading.Thread):
    """Renews a worker's certificate when due and loads it into its live TLS context."""

    def __init__(
        self, ca: CertificateAuthority, client_id: str, ctx: ssl.SSLContext, days: float,
        every_s: float = 3600.0,
    ) -> None:  # fmt: skip
        super().__init__(name="server-identity", daemon=True)
        self.ca, self.client_id, self.ctx = ca, client_id, ctx
        self.days, self.every_s = days, every_s
        self.stopped = threading.Event()

    def run(self) -> None:
        cert_path, _key = _paths(self.ca, server_cn(self.client_id))
        while not self.stopped.wait(self.every_s):
            try:
                if _due(cert_path, time.time()):
                    cert, key = ensure(self.ca, self.client_id, self.days)
                    self.ctx.load_cert_chain(str(cert), str(key))
            except Exception:  # the worker keeps its current certificate; retried next round
                log.exception("renewing server identity %s failed", server_cn(self.client_id))
