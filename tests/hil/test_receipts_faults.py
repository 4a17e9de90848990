"""Receipt fault matrix (issue 14, make hil): each run sends numbered events from several
devices at a steady rate for a minute, injects its fault, then counts event by event what
the devices produced against what the database holds: 0 lost, 0 duplicated, the server's
loss counter equal to the truth, every outbox empty. The report gets sent / stored / lost /
duplicated per fault. Short version in make test: tests/test_receipts_e2e.py."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_server.identity.ca import CertificateAuthority
from hil_tests.receipts_faults import Fault, Plan, run
from hil_tests.rig import Recorder

MATRIX = Path(os.environ.get("CAMFLEET_HIL_OUT") or "build/hil") / "receipts_matrix.json"

PLANS = {
    "worker_sigterm_x2": Plan(
        devices=4, rate=10, duration_s=60,
        faults=[Fault(15, "sigterm_server", hold_s=5), Fault(40, "sigterm_server", hold_s=5)],
    ),
    "broker_kill9_x3_devices_first": Plan(
        devices=4, rate=10, duration_s=60,
        faults=[Fault(t, "kill_broker", hold_s=4) for t in (10, 28, 46)],
    ),
    "devices_power_cut_x2_and_worker_kill": Plan(
        devices=4, rate=10, duration_s=60,
        faults=[Fault(12, "kill_devices", hold_s=3), Fault(30, "kill_server", hold_s=3),
                Fault(45, "kill_devices", hold_s=3)],
    ),
    "server_sigstop_60s_small_queue": Plan(
        devices=4, rate=10, duration_s=90, max_queued=200,
        faults=[Fault(10, "stall_server", hold_s=60)],
    ),
}  # fmt: skip


@pytest.fixture
def record(request: pytest.FixtureRequest, hil_recorder: Recorder) -> Iterator[Recorder]:
    doc = (request.function.__doc__ or "").strip().split("\n\n")[0]
    hil_recorder.start(request.node.name, "virtual", " ".join(doc.split()))
    outcome = ["failed"]
    request.node.stash[_DONE] = outcome
    yield hil_recorder
    hil_recorder.end(outcome[0])


_DONE = pytest.StashKey[list[str]]()


def _count(name: str, plan: Plan, work: Path, ca: CertificateAuthority, rec: Recorder) -> None:
    out = run(work, ca, plan)
    t = out.tally
    for line in out.log:
        rec.note(line)
    rec.figures(events_produced=t.sent, events_stored=t.stored, duplicates=t.duplicated)
    rec.note(f"lost {t.lost}, server loss counter {t.server_lost}, left in outboxes "
             f"{out.left_in_outboxes}")  # fmt: skip
    MATRIX.parent.mkdir(parents=True, exist_ok=True)
    matrix = json.loads(MATRIX.read_text()) if MATRIX.exists() else {}
    matrix[name] = {"sent": t.sent, "stored": t.stored, "lost": t.lost,
                    "duplicated": t.duplicated, "server_lost": t.server_lost}  # fmt: skip
    MATRIX.write_text(json.dumps(matrix, indent=1, sort_keys=True))
    assert t.sent > 0, out.log
    assert (t.lost, t.duplicated, t.unexpected, t.server_lost) == (0, 0, 0, 0), (t, out.log)
    assert out.left_in_outboxes == 0, (t, out.log)


@pytest.mark.hil_long
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(PLANS))
def test_receipt_fault_loses_nothing(
    name: str, request: pytest.FixtureRequest, record: Recorder, tmp_path: Path,
    ca: CertificateAuthority,
) -> None:  # fmt: skip
    """Under the fault, every event the devices produced is stored exactly once and the
    server counts no loss."""
    _count(name, PLANS[name], tmp_path, ca, record)
    request.node.stash[_DONE][0] = "passed"


@pytest.mark.hil_long
@pytest.mark.timeout(600)
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_workers_on_postgresql_one_killed_one_restarted(
    database_url: str, request: pytest.FixtureRequest, record: Recorder, tmp_path: Path,
    ca: CertificateAuthority,
) -> None:  # fmt: skip
    """Two ingest workers on PostgreSQL, one killed and one restarted cleanly during the
    run: every event stored exactly once, no loss counted."""
    plan = Plan(
        devices=4, rate=10, duration_s=60, database_url=database_url, workers=2,
        faults=[Fault(15, "kill_server", hold_s=5, target=0),
                Fault(35, "sigterm_server", hold_s=5, target=1)],
    )  # fmt: skip
    _count("two_workers_postgresql", plan, tmp_path, ca, record)
    request.node.stash[_DONE][0] = "passed"


@pytest.mark.hil_long
@pytest.mark.timeout(600)
def test_outbox_disk_filled_and_freed_refusals_counted_on_device_and_server(
    request: pytest.FixtureRequest, record: Recorder, tmp_path: Path, ca: CertificateAuthority
) -> None:
    """The devices' outbox disk filled for 15 s and freed while they publish: what they
    refused is counted on the devices and on the server, never silent; everything they
    kept is stored exactly once and no loss is counted."""
    plan = Plan(devices=3, rate=10, duration_s=60, outbox_disk_mb=8,
                faults=[Fault(20, "fill_disk", hold_s=15)])  # fmt: skip
    out = run(tmp_path, ca, plan)
    t = out.tally
    record.figures(events_produced=t.sent, events_stored=t.stored, duplicates=t.duplicated)
    record.note(f"refused {t.refused} on the devices, {t.server_refused} on the server")
    assert t.refused > 0, (t, out.log)
    assert t.server_refused == t.refused, (t, out.log)
    assert (t.lost, t.duplicated, t.unexpected, t.server_lost) == (0, 0, 0, 0), (t, out.log)
    assert out.left_in_outboxes == 0
    request.node.stash[_DONE][0] = "passed"
