"""Receipts end to end (issue 14), short versions for make test: a TLS Mosquitto, the real
fleet server process and a process of devices running the agent's link stack, counted event
by event: 0 lost, 0 duplicated, and the server's loss counter equal to the truth. The
minute-long fault matrix is tests/hil/test_receipts_faults.py (make hil)."""

from __future__ import annotations

from pathlib import Path

from fleet_server.identity.ca import CertificateAuthority
from hil_tests.receipts_faults import Fault, Plan, run
from hil_tests.receipts_load import Tally


def _clean(t: Tally, left: int, log: list[str]) -> None:
    assert t.sent > 0, log
    assert (t.lost, t.duplicated, t.unexpected) == (0, 0, 0), (t, log)
    assert t.stored == t.sent, (t, log)
    assert t.server_lost == 0 == t.lost, (t, log)
    assert left == 0, (t, log)  # every row receipted and deleted


def test_worker_sigterm_and_broker_kill_with_devices_back_first_lose_nothing(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    """The server stopped cleanly and started again while devices publish (it keeps its
    session), then the broker killed with the server held so the devices are back first."""
    plan = Plan(
        devices=3, rate=10.0, duration_s=9.0, receipt_timeout_s=1.5,
        faults=[Fault(2.0, "sigterm_server", hold_s=1.0), Fault(5.5, "kill_broker", hold_s=2.0)],
    )  # fmt: skip
    out = run(tmp_path, ca, plan)
    print("\n".join(out.log))
    _clean(out.tally, out.left_in_outboxes, out.log)
