"""The offline queue on the technician's laptop: commissioning records waiting for the
network. One file per record, written atomically (temp file, fsync, rename), removed only
after the server has stored it; a record the server refuses moves to ``rejected/`` with
the reason. Closing the laptop between the two loses nothing; sending twice is harmless
(the server recognises a record id it already has)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.files import atomic_write
from provisioning.api import ApiClient
from provisioning.errors import ApiError, Unreachable

log = logging.getLogger(__name__)


def default_home() -> Path:
    return Path(os.environ.get("CAMFLEET_PROVISION_HOME", Path.home() / ".camfleet-provision"))


@dataclass
class SendReport:
    sent: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    left: int = 0
    offline: str = ""


class OfflineQueue:
    def __init__(self, home: Path) -> None:
        self.dir = Path(home) / "queue"
        self.rejected_dir = self.dir / "rejected"

    def put(self, submission: dict[str, Any]) -> Path:
        record_id = str(submission["record"]["record_id"])
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{record_id}.json"
        atomic_write(str(path), json.dumps(submission).encode(), 0o600)
        return path

    def pending(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob("*.json") if p.is_file())

    def send_all(self, api: ApiClient) -> SendReport:
        report = SendReport()
        items = self.pending()
        for index, path in enumerate(items):
            try:
                submission = json.loads(path.read_text())
                api.submit_record(submission)
            except Unreachable as exc:
                report.offline = str(exc)
                report.left = len(items) - index
                return report
            except ApiError as exc:
                if not _record_fault(exc.status):
                    report.offline = str(exc)  # server or token trouble: keep, try later
                    report.left = len(items) - index
                    return report
                self._reject(path, str(exc), report)
                continue
            except (ValueError, KeyError, TypeError) as exc:
                self._reject(path, f"unreadable queue file: {exc}", report)
                continue
            path.unlink()
            report.sent.append(path.stem)
        return report

    def _reject(self, path: Path, reason: str, report: SendReport) -> None:
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(str(self.rejected_dir / (path.stem + ".reason.txt")), reason.encode(), 0o600)
        path.replace(self.rejected_dir / path.name)
        report.rejected.append((path.stem, reason))


def _record_fault(status: int) -> bool:
    """The server refused the record itself (not our token, not its own trouble)."""
    return 400 <= status < 500 and status not in (401, 403, 408, 429)
