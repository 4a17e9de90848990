"""The fleet server process serving the TUF repository under /ota/ (issue 6, docs/ota.md).

A real python-tuf ``ngclient.Updater`` talks HTTPS to the real server process (its
certificate checked against the fleet CA); curl is the independent client for Range,
resume and path traversal. Repository changes (publish, rotation, an expired timestamp)
are made on disk while the server runs, as an operator would.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import urllib3
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from prometheus_client import CollectorRegistry
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import (
    DownloadHTTPError,
    ExpiredMetadataError,
    LengthOrHashMismatchError,
    UnsignedMetadataError,
)
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import FetcherInterface, Updater

from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from fleet_server.ota import release as rel
from fleet_server.ota.serve import (
    BadPath,
    ByteRange,
    OtaCounters,
    TimestampKeeper,
    Unsatisfiable,
    parse_range,
    resolve,
)
from fleet_server.ota.tufrepo import TufRepo
from hil_tests.ota_rig import source_copy
from hil_tests.procs import Broker, free_port, wait_for
from hil_tests.server import ServerProcess

FULL_1 = "agent/camfleet-agent-0.1.0.tar.gz"
FULL_2 = "agent/camfleet-agent-0.2.0.tar.gz"
DELTA = "agent/delta/camfleet-agent-0.1.0-to-0.2.0.bsdiff"


class CAFetcher(FetcherInterface):
    """HTTPS with the fleet CA as the only trust anchor (and a device cert when given)."""

    def __init__(self, ca_bundle: Path, creds: DeviceCredentials | None = None) -> None:
        self.pool = urllib3.PoolManager(
            ca_certs=str(ca_bundle),
            cert_reqs="CERT_REQUIRED",
            retries=False,
            cert_file=str(creds.cert_pem) if creds else None,
            key_file=str(creds.key_pem) if creds else None,
        )

    def _fetch(self, url: str) -> Iterator[bytes]:
        resp = self.pool.request("GET", url, preload_content=False, timeout=10.0)
        if resp.status != 200:
            resp.drain_conn()  # the error body must not stay on the kept-alive connection
            resp.release_conn()
            raise DownloadHTTPError(f"HTTP {resp.status} for {url}", resp.status)
        yield from resp.stream(1 << 16)
        resp.release_conn()


@dataclass
class Site:
    repo_dir: Path
    keys_dir: Path
    server: ServerProcess
    https_port: int
    ca: CertificateAuthority

    @property
    def ota(self) -> str:
        return f"https://localhost:{self.https_port}/ota/"

    def repo(self) -> TufRepo:
        return TufRepo(self.repo_dir, self.keys_dir)

    def updater(self, device_dir: Path, creds: DeviceCredentials | None = None) -> Updater:
        """A device's client: trusted root = 1.root.json, pinned at provisioning."""
        md = device_dir / "metadata"
        if not md.exists():
            md.mkdir(parents=True)
            shutil.copy(self.repo_dir / "metadata/1.root.json", md / "root.json")
        (device_dir / "downloads").mkdir(exist_ok=True)
        return Updater(
            metadata_dir=str(md),
            metadata_base_url=self.ota + "metadata/",
            target_dir=str(device_dir / "downloads"),
            target_base_url=self.ota + "targets/",
            fetcher=CAFetcher(self.ca.bundle_path, creds),
        )

    def curl(self, path: str, tmp: Path, *args: str) -> tuple[int, dict[str, str], bytes]:
        body, head = tmp / "curl.body", tmp / "curl.head"
        body.unlink(missing_ok=True)
        out = subprocess.run(
            ["curl", "-sS", "--cacert", str(self.ca.bundle_path), "-o", str(body),
             "-D", str(head), "-w", "%{http_code}", *args, self.ota + path],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        headers = {}
        for line in head.read_text().splitlines()[1:]:
            name, _, value = line.partition(":")
            if value:
                headers[name.strip().lower()] = value.strip()
        return int(out.stdout), headers, body.read_bytes() if body.exists() else b""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _make_repo(tmp: Path, **create: int) -> tuple[Path, Path]:
    repo_dir, keys_dir = tmp / "R", tmp / "K"
    repo = TufRepo.create(repo_dir, keys_dir, **create)  # type: ignore[arg-type]
    tree = source_copy(tmp / "src")
    (tmp / "work").mkdir()
    rel.add_agent_release(repo, tree, "0.1.0", tmp / "work")
    repo.publish()
    mod = tree / "agent" / "link" / "backoff.py"
    mod.write_text(mod.read_text() + "\n# 0.2.0\n")
    rel.add_agent_release(repo, tree, "0.2.0", tmp / "work", ["0.1.0"])
    repo.publish()
    return repo_dir, keys_dir


def _server(
    tmp: Path, broker: Broker, ca: CertificateAuthority, repo_dir: Path, ota: dict[str, object]
) -> tuple[ServerProcess, int]:
    port = free_port()
    conf = {"enabled": True, "repo_dir": str(repo_dir), "https_port": port, **ota}
    srv = ServerProcess(
        tmp / "server", ca.dir, broker.port, client_id=f"ota-server-{port}", extra={"ota": conf}
    )
    return srv.start_and_wait(timeout=60), port


@pytest.fixture(scope="module")
def site(
    broker: Broker, ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("ota-serve")
    repo_dir, keys_dir = _make_repo(tmp, root_threshold=2, root_keys=3)
    srv, port = _server(tmp, broker, ca, repo_dir, {})  # no keys: no timestamp keeper here
    yield Site(repo_dir, keys_dir, srv, port, ca)
    assert srv.stop() == 0, srv.log_text()[-2000:]


def test_parse_range_follows_rfc_9110() -> None:
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == ByteRange(0, 9)
    assert parse_range("bytes=90-", 100) == ByteRange(90, 99)
    assert parse_range("bytes=90-500", 100) == ByteRange(90, 99)  # end clipped
    assert parse_range("bytes=-10", 100) == ByteRange(90, 99)
    assert parse_range("bytes=-500", 100) == ByteRange(0, 99)  # suffix longer than file
    for ignored in ("bytes=0-9,20-29", "bytes=9-0", "items=0-9", "bytes=-", "bytes=a-b"):
        assert parse_range(ignored, 100) is None, ignored  # whole file
    for unsatisfiable in ("bytes=100-", "bytes=100-200", "bytes=-0"):
        with pytest.raises(Unsatisfiable):
            parse_range(unsatisfiable, 100)
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=0-", 0)


def test_resolve_serves_only_metadata_and_targets(tmp_path: Path) -> None:
    (tmp_path / "metadata").mkdir()
    assert resolve(tmp_path, "metadata/1.root.json") == tmp_path / "metadata/1.root.json"
    assert resolve(tmp_path, "targets/agent/x.tar.gz") == tmp_path / "targets/agent/x.tar.gz"
    for bad in (
        "metadata",
        "keys/targets.key",
        "metadata/../staged.json",
        "targets//x",
        "targets/a\\b",
        "targets/x\x00",
        "targets/.x",
        "metadata/timestamp.json.tmp",
    ):
        with pytest.raises(BadPath):
            resolve(tmp_path, bad)


def test_timestamp_keeper_refreshes_only_when_due_and_counts_failures(tmp_path: Path) -> None:
    now = [datetime(2026, 6, 1, tzinfo=UTC)]
    repo = TufRepo.create(tmp_path / "R", tmp_path / "K", clock=lambda: now[0])
    registry = CollectorRegistry()
    keeper = TimestampKeeper(repo, 60, OtaCounters(registry))
    version = repo.timestamp().signed.version
    now[0] += timedelta(hours=11)  # more than half of the day left: nothing to do
    assert keeper.check() is False and repo.timestamp().signed.version == version
    now[0] += timedelta(hours=2)
    assert keeper.check() is True
    ts = repo.timestamp().signed
    assert ts.version == version + 1 and ts.expires == now[0] + timedelta(days=1)
    (tmp_path / "K/timestamp.key").unlink()  # a lost key: counted, logged, nothing written
    now[0] += timedelta(hours=13)
    assert keeper.check() is False
    assert repo.timestamp().signed.version == version + 1
    failed = registry.get_sample_value(
        "camfleet_ota_timestamp_refreshes_total", {"outcome": "failed"}
    )
    ok = registry.get_sample_value("camfleet_ota_timestamp_refreshes_total", {"outcome": "ok"})
    assert (ok, failed) == (1.0, 1.0)


def test_updater_refreshes_and_downloads_targets_over_https(site: Site, tmp_path: Path) -> None:
    up = site.updater(tmp_path / "dev")
    up.refresh()
    info = up.get_targetinfo(FULL_2)
    assert info is not None
    assert info.custom["camfleet"]["release"] == "0.2.0"
    got = Path(up.download_target(info))
    assert _sha(got.read_bytes()) == info.hashes["sha256"]
    assert rel.read_manifest(got)["release"] == "0.2.0"
    # the delta path a device takes: running 0.1.0 bundle + patch == the signed full bundle
    old_info, delta_info = up.get_targetinfo(FULL_1), up.get_targetinfo(DELTA)
    assert old_info is not None and delta_info is not None
    assert delta_info.custom["camfleet"]["delta_from"] == "0.1.0"
    assert delta_info.length < info.length
    old = Path(up.download_target(old_info, str(tmp_path / "old.tar.gz")))
    patch = Path(up.download_target(delta_info, str(tmp_path / "d.bsdiff")))
    out = rel.apply_delta(old, patch, tmp_path / "rebuilt.tar.gz")
    assert _sha(out.read_bytes()) == info.hashes["sha256"]
    assert up.get_targetinfo("agent/camfleet-agent-9.9.9.tar.gz") is None
    # the plain REST API port serves the same bytes (for a proxy or an operator)
    status, body = site.server.get("/ota/metadata/1.root.json", token="")
    assert status == 200
    assert body == json.loads((site.repo_dir / "metadata/1.root.json").read_bytes())


def test_a_tampered_target_is_refused_by_the_client(site: Site, tmp_path: Path) -> None:
    up = site.updater(tmp_path / "dev")
    up.refresh()
    info = up.get_targetinfo(FULL_1)
    assert info is not None
    stored = site.repo().local_target(FULL_1)
    original = stored.read_bytes()
    try:
        stored.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(LengthOrHashMismatchError):
            up.download_target(info, str(tmp_path / "x"))
    finally:
        stored.write_bytes(original)
    assert not (tmp_path / "x").exists()


def test_range_requests_resume_and_headers_with_curl(site: Site, tmp_path: Path) -> None:
    repo = site.repo()
    info = repo.target_info(FULL_2)
    assert info is not None
    data = repo.local_target(FULL_2).read_bytes()
    url = f"targets/agent/{info.sha256}.camfleet-agent-0.2.0.tar.gz"
    status, head, body = site.curl(url, tmp_path)
    assert (status, body) == (200, data)
    assert head["accept-ranges"] == "bytes"
    assert head["etag"] == f'"{info.sha256}"'
    assert head["content-type"] == "application/gzip"
    assert int(head["content-length"]) == len(data)
    status, head, body = site.curl(url, tmp_path, "-r", "100-199")
    assert (status, body) == (206, data[100:200])
    assert head["content-range"] == f"bytes 100-199/{len(data)}"
    status, head, body = site.curl(url, tmp_path, "-r", "-10")
    assert (status, body) == (206, data[-10:])
    assert head["content-range"] == f"bytes {len(data) - 10}-{len(data) - 1}/{len(data)}"
    status, head, _ = site.curl(url, tmp_path, "-r", f"{len(data)}-")
    assert status == 416
    assert head["content-range"] == f"bytes */{len(data)}"
    # a stale If-Range (the file changed): the whole file, not a piece of the new one
    status, _, body = site.curl(url, tmp_path, "-r", "0-9", "-H", 'If-Range: "other"')
    assert (status, body) == (200, data)
    # resume: curl -C - continues a partial download where it stopped
    part = tmp_path / "partial"
    part.write_bytes(data[:5000])
    subprocess.run(
        ["curl", "-sS", "--cacert", str(site.ca.bundle_path), "-C", "-", "-o", str(part),
         site.ota + url],
        check=True, timeout=30,
    )  # fmt: skip
    assert part.read_bytes() == data
    status, head, body = site.curl("metadata/timestamp.json", tmp_path, "-I")  # HEAD
    ts = (site.repo_dir / "metadata/timestamp.json").read_bytes()
    assert status == 200 and b'"signed"' not in body  # curl -I writes only the headers
    assert int(head["content-length"]) == len(ts)
    assert head["content-type"] == "application/json"
    assert head["cache-control"] == "no-cache"
    assert head["etag"] == f'"{_sha(ts)}"'


def test_path_traversal_and_non_repository_files_are_refused(site: Site, tmp_path: Path) -> None:
    secret = b"SECRET-" + hashlib.sha256(str(tmp_path).encode()).hexdigest().encode()
    (site.repo_dir / "secret.txt").write_bytes(secret)
    (site.repo_dir / "targets" / "link.txt").symlink_to(site.repo_dir / "secret.txt")
    before = site.server.metric("camfleet_ota_requests_total", 'outcome="bad_path"')
    bad = [
        "../server/server.toml",
        "metadata/../secret.txt",
        "targets/../../secret.txt",
        "%2e%2e/secret.txt",
        "targets/%2e%2e%2fsecret.txt",
        "secret.txt",
        "staged.json",
        "metadata/timestamp.json.tmp",
        "targets/.hidden",
        "targets/link.txt",
    ]
    for path in bad:
        status, _, body = site.curl(path, tmp_path, "--path-as-is")
        assert status == 400, (path, status)
        assert body.startswith(b"bad_path:"), path
        assert secret not in body
    status, _, body = site.curl("metadata/nope.json", tmp_path)
    assert (status, body) == (404, b"not_found")
    after = site.server.metric("camfleet_ota_requests_total", 'outcome="bad_path"')
    assert after - before == len(bad)


def test_rotation_of_targets_and_root_keys_the_client_walks_the_chain(
    site: Site, tmp_path: Path
) -> None:
    veteran = site.updater(tmp_path / "veteran")  # refreshed before the rotations
    veteran.refresh()
    start = site.repo().root_version()
    repo = site.repo()
    old_targets_ids = set(repo.root().signed.roles["targets"].keyids)
    repo.rotate("targets")
    repo.rotate("root")
    repo.rotate("timestamp")
    assert repo.root_version() == start + 3
    data = tmp_path / "fw.bundle"
    data.write_bytes(b"node firmware after rotation")
    repo.add_target("firmware/camfleet-node-2.0.0.bundle", data, {"camfleet": {}})
    repo.publish()
    for name in ("veteran", "newcomer"):  # a new Updater per update cycle, as on a device
        dev = site.updater(tmp_path / name)
        dev.refresh()
        trusted = Metadata[Root].from_file(str(tmp_path / name / "metadata/root.json"))
        assert trusted.signed.version == start + 3, name
        assert not set(trusted.signed.roles["targets"].keyids) & old_targets_ids
        info = dev.get_targetinfo("firmware/camfleet-node-2.0.0.bundle")
        assert info is not None, name
        assert Path(dev.download_target(info)).read_bytes() == data.read_bytes()
    # a next root signed by one root key only (threshold 2): refused, trust unchanged
    current = repo.root()
    forged = Metadata(Root.from_dict(current.signed.to_dict()))
    forged.signed.version += 1
    one_key = sorted((site.keys_dir).glob("root-*.key"))[0]
    forged.sign(CryptoSigner(load_pem_private_key(one_key.read_bytes(), None)))
    bad_root = site.repo_dir / f"metadata/{forged.signed.version}.root.json"
    bad_root.write_bytes(forged.to_bytes(JSONSerializer()))
    try:
        with pytest.raises(UnsignedMetadataError):
            site.updater(tmp_path / "veteran").refresh()
        trusted = Metadata[Root].from_file(str(tmp_path / "veteran/metadata/root.json"))
        assert trusted.signed.version == start + 3
    finally:
        bad_root.unlink()


def test_expired_timestamp_is_refused_until_refreshed(site: Site, tmp_path: Path) -> None:
    site.updater(tmp_path / "dev").refresh()
    past = datetime.now(UTC) - timedelta(days=2)
    TufRepo(site.repo_dir, site.keys_dir, clock=lambda: past).refresh_timestamp()
    with pytest.raises(ExpiredMetadataError):
        site.updater(tmp_path / "dev").refresh()
    with pytest.raises(ExpiredMetadataError):
        site.updater(tmp_path / "fresh").refresh()
    site.repo().refresh_timestamp()
    up = site.updater(tmp_path / "dev")
    up.refresh()
    assert up.get_targetinfo(FULL_1) is not None


@pytest.mark.slow
def test_server_keeps_the_timestamp_fresh_and_can_require_device_certs(
    broker: Broker,
    ca: CertificateAuthority,
    device_factory: object,
    tmp_path: Path,
) -> None:
    repo_dir, keys_dir = _make_repo(tmp_path)
    past = datetime.now(UTC) - timedelta(days=2)
    TufRepo(repo_dir, keys_dir, clock=lambda: past).refresh_timestamp()  # already expired
    expired_version = TufRepo(repo_dir, keys_dir).timestamp().signed.version
    srv, port = _server(
        tmp_path,
        broker,
        ca,
        repo_dir,
        {"keys_dir": str(keys_dir), "refresh_check_s": 0.5, "require_client_cert": True},
    )
    try:
        site = Site(repo_dir, keys_dir, srv, port, ca)
        creds = device_factory("cam-ota-serve-1")  # type: ignore[operator]
        status, _, body = site.curl("metadata/1.root.json", tmp_path)
        assert status == 403 and body.startswith(b"forbidden")
        status, _, _ = site.curl(
            "metadata/1.root.json", tmp_path, "--cert", str(creds.cert_pem),
            "--key", str(creds.key_pem),
        )  # fmt: skip
        assert status == 200

        def refreshed() -> bool:
            ts = TufRepo(repo_dir, keys_dir).timestamp().signed
            return ts.version > expired_version and not ts.is_expired()

        wait_for(refreshed, 30, interval=0.2, what="the server's timestamp refresh")
        up = site.updater(tmp_path / "dev", creds)
        up.refresh()
        assert up.get_targetinfo(FULL_2) is not None
        assert srv.metric("camfleet_ota_timestamp_refreshes_total", 'outcome="ok"') >= 1
        assert srv.metric("camfleet_ota_requests_total", 'outcome="no_client_cert"') == 1
    finally:
        assert srv.stop() == 0, srv.log_text()[-2000:]
