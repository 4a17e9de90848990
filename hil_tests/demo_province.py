"""make demo, the province part: the demo's real devices and a few dozen simulated ones
commissioned at sites around Bắc Ninh, so the first look at the dashboard shows a map,
counts over time and problems.

- simulated devices (``hil_tests.fleet_sim``: real MQTT over mutual TLS, a heartbeat every
  10 s) at most sites;
- four devices whose last heartbeat is an hour old (the server marks them offline), three
  running hot (a temperature alert), one whose camera sees a dark scene (scene alert);
- a day of traffic counts at every site, snapshots, certificates (two about to expire);
- one rollout, paused in its first wave, with one device whose update failed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from fleet_server.identity.ca import CertificateAuthority
from fleet_server.rollouts import model as rm
from hil_tests import province
from hil_tests.procs import Process

SIMULATED = tuple(f"sim-bn-{i:02d}" for i in range(1, 33))
OFFLINE = ("sim-bn-off-1", "sim-bn-off-2", "sim-bn-off-3", "sim-bn-off-4")
HOT = ("sim-bn-hot-1", "sim-bn-hot-2", "sim-bn-hot-3")
DARK = ("sim-bn-dark-1",)


def start_simulated(ca: CertificateAuthority, state: Path, broker_port: int) -> Process:
    """The simulated devices' certificates (kept in ``state``) and the simulator."""
    creds = state / "sim-devices"
    for dev in SIMULATED:
        if not (creds / dev / "cert.pem").exists():
            ca.issue_device(dev, creds / dev, days=365)
    return Process(
        "fleet-sim",
        [sys.executable, "-m", "hil_tests.fleet_sim", "--creds", str(creds), "--root",
         str(ca.root_cert_path), "--port", str(broker_port), "--interval", "10",
         "--first-spread", "3", "--rate", "50", "--duration", str(7 * 86400),
         "--stats", str(state / "sim-stats.json")],
        state / "logs" / "fleet-sim.log",
    ).start()  # fmt: skip


def populate(sessions: sessionmaker[Session], real: Sequence[str]) -> dict[str, int]:
    """Everything but the simulator's own heartbeats; returns what was added."""
    now = time.time()
    reg = province.registry(sessions)
    everyone = [*real, *SIMULATED, *OFFLINE, *HOT, *DARK]
    placed = province.seed_sites(sessions, everyone, now)
    reg.apply([province.heartbeat(d, now - 3600, 60.0) for d in OFFLINE])
    for k in range(2):  # two bad heartbeats open an alert (rules' open_after)
        reg.apply([province.heartbeat(d, now - 10 + k, 3600.0, temp_c=91.5) for d in HOT])
        reg.apply([province.heartbeat(d, now - 10 + k, 3600.0, scene=["dark"]) for d in DARK])
    first: dict[str, str] = {}
    for device, site in placed.items():
        first.setdefault(site, device)
    counting = sorted(first.values())  # one counting camera per site
    n_counts = province.seed_counts(sessions, counting, hours=24, now=now)
    n_snaps = province.seed_snapshots(sessions, SIMULATED[:8], now)
    province.seed_certificates(sessions, everyone, expiring=SIMULATED[5:7], now=now)
    _rollout(sessions, SIMULATED[10:20], now)
    return {"devices": len(everyone), "sites": len(province.SITES), "counts": n_counts,
            "snapshots": n_snaps}  # fmt: skip


def _rollout(sessions: sessionmaker[Session], devices: Sequence[str], now: float) -> None:
    cid = "demo-agent-0-3-1"
    with sessions.begin() as db:
        if db.get(rm.Campaign, cid) is not None:
            return
        db.add(rm.Campaign(
            id=cid, name="agent 0.3.1 (Bắc Ninh, đợt 1)", artifact="agent", release="0.3.1",
            target="agent", filter={"device_ids": list(devices)},
            waves=[{"count": len(devices), "percent": None, "success": None, "failure": None}],
            wave_ends=[len(devices)], success_threshold=0.8, failure_threshold=0.3,
            soak_s=900, rate_per_min=5, windows=[], device_deadline_s=3600, state=rm.PAUSED,
            wave=0, reason="paused by op-lan for the evening peak", created_at=now - 5400,
            created_by="op-lan", updated_at=now - 1200,
        ))  # fmt: skip
        db.flush()
        for i, dev in enumerate(devices):
            state = rm.COMMITTED if i < 6 else rm.FAILED if i == 6 else rm.PENDING
            db.add(rm.CampaignDevice(
                campaign_id=cid, device_id=dev, wave=0, position=i, state=state,
                from_release="0.3.0", asked_at=now - 4000 if i <= 6 else None,
                state_at=now - 3000 + 60 * i, committed_at=now - 3000 + 60 * i if i < 6 else None,
                healthy=True if i < 6 else None,
                error="download: hash mismatch" if state == rm.FAILED else None,
            ))  # fmt: skip
            db.add(rm.RolloutClaim(device_id=dev, campaign_id=cid))
