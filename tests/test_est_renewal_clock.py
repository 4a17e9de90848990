"""Renewal over EST with mutual TLS, and the clock sanity checks that come before it
(agent and node), tested with wrong clocks injected as time sources."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.identity import est_client
from agent.identity.clock_guard import FILE_NAME, RELEASE_FLOOR, ClockGuard, assess
from agent.identity.renewal import RenewalSettings, Renewer, plan, read_chain
from fleet_server.identity.ca import CertificateAuthority
from hil_tests.identity import IdentityServer
from hil_tests.procs import Broker
from tests.mp import harness, timecheck_cases

DAY = 86400.0

test_node_timecheck_cpython, test_node_timecheck_micropython = harness.both_interpreters(
    timecheck_cases, 5
)


@pytest.fixture(scope="module")
def server(
    broker: Broker, ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IdentityServer]:
    srv = IdentityServer(tmp_path_factory.mktemp("renew-server"), ca, broker)
    srv.start_all()
    yield srv
    srv.stop()


def _enrolled(server: IdentityServer, device_id: str, tmp: Path) -> tuple[Path, Path]:
    """Enroll through EST; cert.pem = leaf + issuing CA (as the provisioning tool writes)."""
    key = est_client.new_key()
    client = est_client.EstClient(server.est_url, server.ca.root_cert_path)
    cert = client.simpleenroll(
        est_client.make_csr(key, device_id), server.token(device_id), device_id
    )
    issuing = client.cacerts()[0]
    (tmp / "key.pem").write_bytes(est_client.key_pem(key))
    (tmp / "cert.pem").write_bytes(est_client.pem(cert) + est_client.pem(issuing))
    return tmp / "cert.pem", tmp / "key.pem"


def _renewer(server: IdentityServer, device: str, tmp: Path, clock: object) -> Renewer:
    cert, key = _enrolled(server, device, tmp)
    guard = ClockGuard(tmp / "state", clock=clock)  # type: ignore[arg-type]
    (tmp / "state").mkdir(exist_ok=True)
    settings = RenewalSettings(est_url=server.est_url, retry_s=1, check_s=60)
    return Renewer(
        device, settings, ca=server.ca.root_cert_path, cert=cert, key=key, guard=guard,
        rnd=lambda: 0.5,
    )  # fmt: skip


def test_plan_is_two_thirds_with_jitter(ca: CertificateAuthority, tmp_path: Path) -> None:
    creds = ca.issue_device("plan-dev-01", tmp_path, days=30)
    leaf = read_chain(creds.cert_pem)[0]
    start = leaf.not_valid_before_utc.timestamp()
    life = leaf.not_valid_after_utc.timestamp() - start
    middle = plan(leaf, 2 / 3, 0.05, 0.5).renew_at
    assert middle == pytest.approx(start + life * 2 / 3)
    early, late = plan(leaf, 2 / 3, 0.05, 0.0).renew_at, plan(leaf, 2 / 3, 0.05, 0.999).renew_at
    assert early == pytest.approx(start + life * (2 / 3 - 0.05))
    assert late == pytest.approx(start + life * (2 / 3 + 0.05), rel=1e-4)
    # a fleet renews spread over 10 % of the life, not at one instant
    assert late - early > 0.09 * life


def test_renews_when_due_over_mutual_tls(server: IdentityServer, tmp_path: Path) -> None:
    offset = [0.0]
    renewer = _renewer(server, "rn-due-01", tmp_path, lambda: time.time() + offset[0])
    before = read_chain(renewer.cert)
    # not due yet: nothing happens, the next look is planned
    assert renewer.step() > 0 and renewer.renewals == 0
    # 21 days later (past 2/3 of 30 days): renewed, same key, chain kept, file replaced
    offset[0] = 21 * DAY
    renewer.step()
    assert renewer.renewals == 1
    after = read_chain(renewer.cert)
    assert after[0].serial_number != before[0].serial_number
    assert after[0].subject == before[0].subject and after[1] == before[1]
    assert after[0].public_key() == before[0].public_key()
    # and the new certificate is again good for renewal (mutual TLS with it)
    renewer.renew()
    assert renewer.renewals == 2


def test_no_renewal_on_a_1970_clock(server: IdentityServer, tmp_path: Path) -> None:
    renewer = _renewer(server, "rn-1970-01", tmp_path, lambda: 12.0)
    serial = read_chain(renewer.cert)[0].serial_number
    assert renewer.step() <= 60 and renewer.renewals == 0
    assert read_chain(renewer.cert)[0].serial_number == serial


def test_expired_certificate_is_not_renewed(server: IdentityServer, tmp_path: Path) -> None:
    renewer = _renewer(server, "rn-late-01", tmp_path, lambda: time.time() + 40 * DAY)
    assert renewer.step() == 60  # check_s: it only looks again later
    assert renewer.renewals == 0  # the way back is a fresh token (docs/identity.md)


def test_renewal_refused_after_revocation(server: IdentityServer, tmp_path: Path) -> None:
    renewer = _renewer(server, "rn-revoked-01", tmp_path, lambda: time.time() + 21 * DAY)
    status, _ = server.call("POST", "/api/devices/rn-revoked-01/revoke", {"reason": "test"})
    assert status == 200
    with pytest.raises(est_client.EstError) as info:
        renewer.renew()
    assert info.value.status == 403
    assert renewer.step() == 1  # retry_s: it keeps trying, and keeps being refused
    assert renewer.renewals == 0


def test_clock_guard_floors() -> None:
    assert not assess(0.0, RELEASE_FLOOR, None).ok  # 1970 after a power cut
    assert assess(RELEASE_FLOOR + 1, RELEASE_FLOOR, None).ok
    later = RELEASE_FLOOR + 100 * DAY
    state = assess(RELEASE_FLOOR + DAY, RELEASE_FLOOR, later)  # clock set back
    assert not state.ok and state.behind_s > 98 * DAY


def test_clock_guard_waits_for_time_sync_and_saves_last_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    readings = iter([0.0, 0.0, 0.0])  # 1970 until "NTP" answers

    def clock() -> float:
        return next(readings, time.time())

    guard = ClockGuard(tmp_path, clock=clock)
    stop = threading.Event()
    with caplog.at_level("WARNING"):
        assert guard.wait_sane(stop, poll_s=0.01, report_s=0.01)
    assert "waiting for time sync" in caplog.text
    saved = float((tmp_path / FILE_NAME).read_text())
    assert abs(saved - time.time()) < 60
    # after a reboot into a clock set back a day, the saved time holds it
    behind = ClockGuard(tmp_path, clock=lambda: saved - DAY)
    assert not behind.state().ok
    stop.set()
    assert not behind.wait_sane(stop, poll_s=0.01)  # stop while waiting: False, no wait
    # a sane clock moves the saved time forward
    ahead = ClockGuard(tmp_path, clock=lambda: saved + DAY)
    ahead.mark_good(force=True)
    assert float((tmp_path / FILE_NAME).read_text()) == pytest.approx(saved + DAY)
