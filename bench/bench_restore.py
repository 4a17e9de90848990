"""The restore drill, measured (docs/deploy.md "Backups"): a running fleet of simulated
devices (own certificates, heartbeats every 10 s, the contract's reconnect backoff: first
retry spread over 20 s) backed up by `camfleet-server backup`, its server lost, restored by
`camfleet-server restore` onto a fresh state directory and database, and the time from
the start of the restore until every device has reported to the new server again.

CAMFLEET_DRILL_DEVICES sets the fleet size (default 1,000). SQLite, the embedded default.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.results import Figure
from hil_tests.restore_drill import DrillConfig, run_drill


def run(work: Path) -> list[Figure]:
    n = int(os.environ.get("CAMFLEET_DRILL_DEVICES", "1000"))
    cfg = DrillConfig(devices=n, interval_s=10.0, first_spread_s=20.0, cap_s=60.0,
                      timeout_s=300.0, grace=3.0)  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    result = run_drill(work, f"sqlite:///{work / 'a.db'}", f"sqlite:///{work / 'b.db'}", cfg)
    size = result.archive.stat().st_size
    return [
        Figure(
            "restore_reconnect_s",
            round(result.reconnect_s, 2),
            "s",
            "devices' first reconnect spread over 20 s, heartbeat every 10 s",
            f"{result.reporting} of {n - 1} devices reporting to the restored server with "
            f"their own certificates (one revoked before the backup stayed out); restore "
            f"command {result.restore_s:.1f} s, backup of the running server "
            f"{result.backup_s:.1f} s, archive {size / 1e6:.1f} MB; SQLite, one machine",
        )
    ]
