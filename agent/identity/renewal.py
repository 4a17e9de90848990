"""Certificate renewal: at about two thirds of the certificate's life (with random jitter,
so a fleet enrolled on one day does not renew in one burst), re-enroll over mutual TLS
with the current certificate (EST ``simplereenroll``), same key, and replace the
certificate file atomically. The MQTT link reads the files again at its next connection.

No decision is taken on an untrusted clock (``agent.identity.clock_guard``). A certificate that
expired while the box was off cannot renew itself: the log says so, and the way back is a
fresh enrollment token approved by an operator (docs/identity.md).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field

from agent.identity.clock_guard import ClockGuard
from agent.identity.est_client import EstClient, EstError, load_key, make_csr, pem
from common.files import atomic_write

log = logging.getLogger(__name__)


class RenewalSettings(BaseModel):
    """Where and when the agent renews its certificate."""

    model_config = ConfigDict(extra="forbid")

    est_url: str = Field(description="EST server, https://host:port (the fleet server).")
    fraction: float = Field(
        2 / 3, gt=0.1, lt=0.95, description="Renew at this fraction of the certificate's life."
    )
    jitter: float = Field(
        0.05, ge=0, le=0.2, description="Uniform spread around that point, fraction of life."
    )
    retry_s: float = Field(
        300.0, gt=0, le=86400, description="Wait after a failed attempt, seconds."
    )
    check_s: float = Field(
        3600.0, gt=0, le=86400, description="Longest sleep between two looks at the clock."
    )


@dataclass(frozen=True)
class Plan:
    renew_at: float
    expires_at: float


def plan(cert: x509.Certificate, fraction: float, jitter: float, rnd: float) -> Plan:
    """When to renew ``cert``: ``fraction`` of its life, +- ``jitter`` of its life."""
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    life = max(1.0, end - start)
    offset = fraction + (2.0 * rnd - 1.0) * jitter
    return Plan(start + life * offset, end)


def read_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(Path(path).read_bytes())


class Renewer(threading.Thread):
    def __init__(
        self,
        device_id: str,
        settings: RenewalSettings,
        *,
        ca: Path,
        cert: Path,
        key: Path,
        guard: ClockGuard,
        rnd: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(name="cert-renewal", daemon=True)
        self.device_id = device_id
        self.settings = settings
        self.ca, self.cert, self.key = Path(ca), Path(cert), Path(key)
        self.guard = guard
        self.rnd = rnd
        self.stopped = threading.Event()
        self.renewals = 0
        self._draw = rnd()

    def current_plan(self) -> Plan:
        leaf = read_chain(self.cert)[0]
        return plan(leaf, self.settings.fraction, self.settings.jitter, self._draw)

    def renew(self) -> x509.Certificate:
        """One re-enrollment; the new certificate replaces the file (chain kept)."""
        chain = read_chain(self.cert)
        client = EstClient(self.settings.est_url, self.ca, cert=self.cert, key=self.key)
        new = client.simplereenroll(make_csr(load_key(self.key), self.device_id))
        data = pem(new) + b"".join(pem(c) for c in chain[1:])
        atomic_write(str(self.cert), data, 0o644)
        self.renewals += 1
        self._draw = self.rnd()
        log.info(
            "certificate renewed: serial %x, valid until %s",
            new.serial_number,
            new.not_valid_after_utc.isoformat(),
        )
        return new

    def step(self) -> float:
        """Renew if due; seconds to sleep before the next look."""
        state = self.guard.state()
        self.guard.mark_good()  # a sane clock moves the floor forward (at most every 10 min)
        if not state.ok:
            log.warning("renewal postponed: the clock is not trusted yet")
            return min(60.0, self.settings.check_s)
        try:
            current = self.current_plan()
        except (OSError, ValueError) as exc:
            log.error("cannot read the certificate %s: %s", self.cert, exc)
            return self.settings.retry_s
        if state.now >= current.expires_at:
            log.error(
                "certificate expired at %s: renewal is not possible; ask an operator for a "
                "fresh enrollment token (docs/identity.md, 'Offline past expiry')",
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(current.expires_at)),
            )
            return self.settings.check_s
        if state.now < current.renew_at:
            return min(self.settings.check_s, current.renew_at - state.now)
        try:
            self.renew()
        except (EstError, OSError) as exc:
            log.warning("renewal failed, retrying in %.0f s: %s", self.settings.retry_s, exc)
            return self.settings.retry_s
        return 1.0

    def run(self) -> None:
        while not self.stopped.is_set():
            delay = self.step()
            if self.stopped.wait(max(0.05, delay)):
                return
