"""Helpers for the node's OTA tests: a real TUF repository (fleet_server.ota.tufrepo, made
with python-tuf), firmware bundles (firmware.bundle), the pinned keys a node gets, the
fixture files the MicroPython cases read, and a TCP relay that cuts a transfer once."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Targets
from tuf.api.serialization.json import CanonicalJSONSerializer

from firmware import bundle
from firmware.bundle_build import build_bundle
from fleet_server.ota.release import firmware_target
from fleet_server.ota.tufrepo import TufRepo

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"


def make_repo(root: Path, *, clock: datetime | None = None) -> TufRepo:
    kwargs: dict[str, Any] = {}
    if clock is not None:
        kwargs["clock"] = lambda: clock
    return TufRepo.create(root / "repo", root / "keys", **kwargs)


def publish_firmware(repo: TufRepo, bundle_file: Path, release: str) -> str:
    path = firmware_target(release)
    repo.add_target(path, bundle_file, {"camfleet": {"artifact": "firmware", "release": release}})
    repo.publish()
    return path


def pinned_keys(repo: TufRepo) -> tuple[dict[str, str], int]:
    """The targets role's keys (key id -> public hex) and threshold, from the root."""
    root = repo.root().signed
    role = root.roles["targets"]
    keys = {kid: str(root.keys[kid].keyval["public"]) for kid in role.keyids}
    return keys, role.threshold


def latest_targets(repo_dir: Path) -> Path:
    meta = repo_dir / "metadata"
    versions = sorted(int(p.name.split(".")[0]) for p in meta.glob("*.targets.json"))
    return meta / f"{versions[-1]}.targets.json"


def canonical_signed(path: Path) -> bytes:
    """python-tuf's canonical bytes of a metadata file's "signed" (what is signed)."""
    md = Metadata[Targets].from_file(str(path))
    return CanonicalJSONSerializer().serialize(md.signed)


def bundle_of(src: Path, release: str, out: Path, *, sim: bool = True) -> Path:
    return build_bundle(src, release, out, sim=sim)


def write_fixtures(out: Path) -> dict[str, Any]:
    """The files tests/mp/ota_cases.py reads from $MP_CASES_TMP/fixtures."""
    out.mkdir(parents=True, exist_ok=True)
    repo = make_repo(out / "tuf")
    release = "9.1.0"
    fw = bundle_of(FIRMWARE, release, out / "node.bundle")
    path = publish_firmware(repo, fw, release)
    targets = latest_targets(repo.repo_dir)
    shutil.copyfile(targets, out / "targets.json")
    (out / "canonical.bin").write_bytes(canonical_signed(targets))
    keys, threshold = pinned_keys(repo)
    header = bundle.read_header(str(fw))
    info = {
        "keys": keys,
        "threshold": threshold,
        "path": path,
        "release": release,
        "length": fw.stat().st_size,
        "expires": Metadata[Targets]
        .from_file(str(targets))
        .signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": header["files"],
    }
    (out / "info.json").write_text(json.dumps(info))
    return info


def expired_clock() -> datetime:
    return datetime.now(UTC) - timedelta(days=400)


class CuttingRelay:
    """A TCP relay to ``upstream`` that closes the first connection which has sent more
    than ``cut_after`` bytes downstream (TLS passes through untouched), once."""

    def __init__(self, upstream_port: int, cut_after: int) -> None:
        self.upstream = upstream_port
        self.cut_after = cut_after
        self.cuts = 0
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> CuttingRelay:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                down, _addr = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            up = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
            threading.Thread(target=self._pipe, args=(down, up, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, down, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while True:
                data = src.recv(4096)
                if not data:
                    break
                if downstream and self.cuts == 0 and sent + len(data) > self.cut_after:
                    self.cuts += 1
                    dst.sendall(data[: max(self.cut_after - sent, 0)])
                    break
                dst.sendall(data)
                sent += len(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


def fat_bundle(out_dir: Path, release: str, pad: int) -> Path:
    """A well-formed bundle with ``pad`` incompressible bytes in an extra module."""
    import os

    from firmware.bundle_build import pack

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pad.mpy").write_bytes(os.urandom(pad))
    (out_dir / "node.mpy").write_bytes(b"M\x06")
    return pack([out_dir / "pad.mpy", out_dir / "node.mpy"], release, out_dir / "fat.bundle")
