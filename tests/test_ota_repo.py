"""The OTA release repository: TUF metadata and keys, reproducible agent bundles, deltas,
and the ``camfleet-server release`` CLI end to end (issue 6, docs/ota.md).

Serving over HTTPS and the python-tuf client walking rotations are in test_ota_serve.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root, Targets

from fleet_server.ota import release as rel
from fleet_server.ota.published import RepoError
from fleet_server.ota.tufrepo import TufRepo
from hil_tests.ota_rig import source_copy

ROOT = Path(__file__).resolve().parents[1]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _small_change(tree: Path) -> None:
    """One module edited, as a real bug-fix release would."""
    mod = tree / "agent" / "link" / "backoff.py"
    mod.write_text(mod.read_text() + "\n\n# 0.2.0: retry note for the next release\n")


def _snapshot_files(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): _sha(p) for p in sorted(d.rglob("*")) if p.is_file()}


def test_create_makes_keys_0600_and_signed_metadata_per_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    repo = TufRepo.create(
        tmp_path / "R",
        tmp_path / "K",
        root_threshold=2,
        root_keys=3,
        expiry_days={"targets": 30, "timestamp": 0.5},
        clock=lambda: t0,
    )
    keys = sorted(p.name for p in (tmp_path / "K").glob("*.key"))
    assert keys == [
        *("root-1.key", "root-2.key", "root-3.key"),
        *("snapshot.key", "targets.key", "timestamp.key"),
    ]
    for key in (tmp_path / "K").iterdir():
        assert key.stat().st_mode & 0o777 == 0o600, key
    root = Metadata[Root].from_file(str(tmp_path / "R/metadata/1.root.json")).signed
    assert root.consistent_snapshot is True
    assert root.roles["root"].threshold == 2
    assert len(root.roles["root"].keyids) == 3
    assert root.expires == t0 + timedelta(days=365)
    assert repo.targets().signed.expires == t0 + timedelta(days=30)
    assert repo.snapshot().signed.expires == t0 + timedelta(days=7)
    assert repo.timestamp().signed.expires == t0 + timedelta(hours=12)
    names = sorted(p.name for p in (tmp_path / "R/metadata").iterdir())
    assert names == ["1.root.json", "1.snapshot.json", "1.targets.json", "timestamp.json"]
    # never a key in the logs
    pems = [p.read_text().splitlines()[1] for p in (tmp_path / "K").glob("*.key")]
    assert not any(line in caplog.text for line in pems)
    assert "PRIVATE KEY" not in caplog.text


def test_bad_arguments_are_refused_and_change_nothing(tmp_path: Path) -> None:
    with pytest.raises(RepoError, match="threshold"):
        TufRepo.create(tmp_path / "X", tmp_path / "XK", root_threshold=3, root_keys=2)
    with pytest.raises(RepoError, match="expiry"):
        TufRepo.create(tmp_path / "X", tmp_path / "XK", expiry_days={"bogus": 1})
    with pytest.raises(RepoError, match="no TUF repository"):
        TufRepo(tmp_path / "nothing", tmp_path / "XK")
    repo = TufRepo.create(tmp_path / "R", tmp_path / "K")
    with pytest.raises(RepoError, match="already holds a TUF repository"):
        TufRepo.create(tmp_path / "R", tmp_path / "K")
    with pytest.raises(RepoError, match="already holds signing keys"):
        TufRepo.create(tmp_path / "R2", tmp_path / "K")
    assert not (tmp_path / "R2").exists()
    data = tmp_path / "a.bin"
    data.write_bytes(b"a" * 100)
    repo.add_target("agent/x-1.tar.gz", data, {"camfleet": {"artifact": "agent"}})
    repo.publish()
    before = _snapshot_files(tmp_path / "R")
    for bad in ("../x", "/abs", "agent//x", "agent/./x", ""):
        with pytest.raises(RepoError, match="bad target path"):
            repo.add_target(bad, data, {})
    data.write_bytes(b"b" * 100)  # same path, other bytes: published targets are immutable
    with pytest.raises(RepoError, match="already published"):
        repo.add_target("agent/x-1.tar.gz", data, {})
    with pytest.raises(RepoError, match="does not exist"):
        repo.add_target("agent/y.tar.gz", tmp_path / "missing", {})
    with pytest.raises(RepoError, match="unknown role"):
        repo.rotate("snapshots")
    with pytest.raises(rel.ReleaseError, match="bad release"):
        rel.agent_target("0.1/../../x")
    assert _snapshot_files(tmp_path / "R") == before


@pytest.fixture(scope="module")
def firmware_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real node firmware bundle of release 1.4.0 (firmware.bundle, mpy-cross)."""
    out = tmp_path_factory.mktemp("fw") / "node.bundle"
    return rel.build_firmware_bundle(ROOT / "firmware", "1.4.0", out)


def test_targets_are_content_addressed_and_staged_until_publish(
    tmp_path: Path, firmware_bundle: Path
) -> None:
    repo = TufRepo.create(tmp_path / "R", tmp_path / "K")
    with pytest.raises(rel.ReleaseError, match=r"is release 1\.4\.0, not 1\.5\.0"):
        rel.add_firmware_release(repo, firmware_bundle, "1.5.0")
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"\x01firmware" * 50)
    with pytest.raises(rel.ReleaseError, match="not a firmware bundle"):
        rel.add_firmware_release(repo, junk, "1.4.0")
    path = rel.add_firmware_release(repo, firmware_bundle, "1.4.0")
    assert path == "firmware/camfleet-node-1.4.0.bundle"
    digest = _sha(firmware_bundle)
    stored = tmp_path / "R/targets/firmware" / f"{digest}.camfleet-node-1.4.0.bundle"
    assert stored.read_bytes() == firmware_bundle.read_bytes()
    assert repo.target_info(path) is None  # staged: devices do not see it yet
    assert [e.published for e in repo.list_targets()] == [False]
    version = repo.publish()
    info = repo.target_info(path)
    assert info is not None and info.sha256 == digest
    assert info.length == firmware_bundle.stat().st_size
    assert info.custom == {"camfleet": {"artifact": "firmware", "release": "1.4.0"}}
    assert version == 2 and repo.snapshot().signed.meta["targets.json"].version == 2
    assert repo.timestamp().signed.snapshot_meta.version == repo.snapshot().signed.version
    assert not (tmp_path / "R/staged.json").exists()
    signed = Metadata[Targets].from_file(str(tmp_path / "R/metadata/2.targets.json"))
    repo.root().signed.verify_delegate("targets", signed.signed_bytes, signed.signatures)


def test_agent_bundle_is_reproducible_and_carries_a_checked_manifest(tmp_path: Path) -> None:
    a = rel.build_agent_bundle(ROOT, "0.1.0", tmp_path / "a.tar.gz")
    b = rel.build_agent_bundle(ROOT, "0.1.0", tmp_path / "b.tar.gz")
    assert a.read_bytes() == b.read_bytes()
    manifest = rel.read_manifest(a)
    assert manifest["release"] == "0.1.0" and manifest["artifact"] == "agent"
    files = manifest["files"]
    assert isinstance(files, dict)
    assert "firmware/contract.py" in files and "agent/__init__.py" in files
    assert "common/__init__.py" in files
    assert not any("__pycache__" in name for name in files)
    assert files["firmware/contract.py"] == _sha(ROOT / "firmware/contract.py")
    with tarfile.open(a) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {
        (rel.FIXED_MTIME, 0, 0, "", "")
    }
    # a bundle whose file does not match its manifest is refused
    raw = gzip.decompress(a.read_bytes())
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name == "common/__init__.py":
                data += b"# tampered\n"
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(gzip.compress(out.getvalue()))
    with pytest.raises(rel.ReleaseError, match="does not match its manifest"):
        rel.read_manifest(bad)
    (tmp_path / "junk.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(rel.ReleaseError, match="not a valid gzip"):
        rel.read_manifest(tmp_path / "junk.tar.gz")


def test_delta_round_trip_reproduces_the_full_bundle_exactly(tmp_path: Path) -> None:
    tree = source_copy(tmp_path / "src")
    old = rel.build_agent_bundle(tree, "0.1.0", tmp_path / "old.tar.gz")
    _small_change(tree)
    new = rel.build_agent_bundle(tree, "0.2.0", tmp_path / "new.tar.gz")
    patch = rel.make_delta(old, new, tmp_path / "d.bsdiff")
    assert patch.stat().st_size < new.stat().st_size  # the figure itself: bench_ota
    out = rel.apply_delta(old, patch, tmp_path / "out.tar.gz")
    assert _sha(out) == _sha(new)
    assert rel.read_manifest(out)["release"] == "0.2.0"
    # the patch on another base does not give the signed full bundle
    other = rel.build_agent_bundle(tree, "0.0.9", tmp_path / "other.tar.gz")
    wrong = rel.apply_delta(other, patch, tmp_path / "wrong.tar.gz")
    assert _sha(wrong) != _sha(new)
    broken = tmp_path / "broken.bsdiff"
    broken.write_bytes(patch.read_bytes()[:-7])
    with pytest.raises(rel.ReleaseError, match="does not apply"):
        rel.apply_delta(old, broken, tmp_path / "never.tar.gz")
    assert not (tmp_path / "never.tar.gz").exists()


def test_add_agent_release_with_delta_records_custom_fields(tmp_path: Path) -> None:
    repo = TufRepo.create(tmp_path / "R", tmp_path / "K")
    tree = source_copy(tmp_path / "src")
    work = tmp_path / "work"
    work.mkdir()
    assert rel.add_agent_release(repo, tree, "0.1.0", work) == ["agent/camfleet-agent-0.1.0.tar.gz"]
    repo.publish()
    _small_change(tree)
    with pytest.raises(rel.ReleaseError, match=r"no agent release 0\.0\.1"):
        rel.add_agent_release(repo, tree, "0.2.0", work, ["0.0.1"])
    staged = rel.add_agent_release(repo, tree, "0.2.0", work, ["0.1.0"])
    assert staged == [
        "agent/camfleet-agent-0.2.0.tar.gz",
        "agent/delta/camfleet-agent-0.1.0-to-0.2.0.bsdiff",
    ]
    repo.publish()
    full = repo.target_info(staged[0])
    delta = repo.target_info(staged[1])
    assert full is not None and delta is not None
    assert delta.custom["camfleet"] == {
        "artifact": "agent",
        "release": "0.2.0",
        "delta_from": "0.1.0",
        "full": staged[0],
    }
    tar = gzip.decompress(repo.local_target(staged[0]).read_bytes())
    assert full.custom["camfleet"]["tar_sha256"] == hashlib.sha256(tar).hexdigest()
    rebuilt = rel.apply_delta(
        repo.local_target("agent/camfleet-agent-0.1.0.tar.gz"),
        repo.local_target(staged[1]),
        tmp_path / "rebuilt.tar.gz",
    )
    assert _sha(rebuilt) == full.sha256


def test_model_bundle_directory_is_tarred_reproducibly(tmp_path: Path) -> None:
    from common.model_bundle import build_model_bundle

    repo = TufRepo.create(tmp_path / "R", tmp_path / "K")
    src = tmp_path / "src"
    (src / "eval").mkdir(parents=True)
    (src / "model.bin").write_bytes(b"TFL3" + bytes(100))  # the gate, not this, runs it
    (src / "labels.txt").write_text("???\nPerson\nCar\n")
    (src / "eval" / "a.png").write_bytes(b"\x89PNG fake image bytes")
    (src / "eval" / "expected.json").write_text(
        json.dumps({"a.png": [{"label": "Person", "box": [0.1, 0.1, 0.5, 0.9]}]})
    )
    bundle = build_model_bundle(
        src / "model.bin",
        src / "labels.txt",
        ROOT / "agent/vision/cards/ssd_mobilenetv2_oidv4.toml",
        src / "eval",
        "2026.11.1",
        tmp_path / "bundle",
    )
    with pytest.raises(rel.ReleaseError, match=r"is release 2026\.11\.1, not 2026\.12\.0"):
        rel.add_model_release(repo, bundle, "2026.12.0", tmp_path)
    path = rel.add_model_release(repo, bundle, "2026.11.1", tmp_path)
    assert path == "model/ssd_mobilenetv2_oidv4-2026.11.1.tar.gz"
    again = rel.tar_directory(bundle, tmp_path / "again.tar.gz")
    assert _sha(again) == _sha(repo.local_target(path))
    with tarfile.open(again) as tar:
        assert sorted(tar.getnames()) == [
            "bundle.json",
            "card.toml",
            "eval/a.png",
            "eval/expected.json",
            "labels.txt",
            "model.tflite",
        ]
    (bundle / "labels.txt").write_text("tampered\n")  # its manifest hash no longer matches
    with pytest.raises(rel.ReleaseError, match="not a valid model bundle"):
        rel.add_model_release(repo, bundle, "2026.11.1", tmp_path)
    with pytest.raises(rel.ReleaseError, match="not a valid model bundle"):
        rel.add_model_release(repo, tmp_path / "nowhere", "1", tmp_path)
    assert [e.path for e in repo.list_targets()] == [path]


def test_rotate_keeps_a_key_for_every_key_id_the_newest_root_lists(tmp_path: Path) -> None:
    repo = TufRepo.create(tmp_path / "R", tmp_path / "K", root_threshold=2, root_keys=3)
    for role in ("targets", "snapshot", "timestamp", "root"):
        old_ids = set(repo.root().signed.roles[role].keyids)
        repo.rotate(role)
        new_root = repo.root().signed
        new_ids = set(new_root.roles[role].keyids)
        assert new_ids and not new_ids & old_ids, role
    assert repo.root_version() == 5
    assert repo.publish() > 1  # the online keys on disk match root v5
    # without root keys (kept offline) the online roles still work, rotation does not
    offline = tmp_path / "offline"
    offline.mkdir()
    for key in (tmp_path / "K").glob("root-*.key"):
        key.rename(offline / key.name)
    repo.refresh_timestamp()
    repo.publish()
    with pytest.raises(RepoError, match="root keys are kept offline"):
        repo.rotate("targets")
    # a world-readable key is refused
    (tmp_path / "K/targets.key").chmod(0o644)
    with pytest.raises(RepoError, match="readable by others"):
        repo.publish()


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "server.toml"
    if not cfg.exists():
        cfg.write_text(
            f'data_dir = "{tmp_path / "data"}"\n\n[ota]\nrepo_dir = "{tmp_path / "R"}"\n'
            f'keys_dir = "{tmp_path / "K"}"\n'
        )
    return subprocess.run(
        [sys.executable, "-m", "fleet_server.cli", "--config", str(cfg), "release", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_release_cli_end_to_end(tmp_path: Path, firmware_bundle: Path) -> None:
    tree = source_copy(tmp_path / "src")
    out = _cli(tmp_path, "init", "--root-threshold", "2", "--root-keys", "3")
    assert out.returncode == 0, out.stderr
    assert "root 2-of-3" in out.stdout
    out = _cli(tmp_path, "add", "agent", "--release", "0.1.0", "--src", str(tree))
    assert out.returncode == 0, out.stderr
    assert "staged agent/camfleet-agent-0.1.0.tar.gz" in out.stdout
    assert _cli(tmp_path, "publish").returncode == 0
    _small_change(tree)
    out = _cli(
        tmp_path, "add", "agent", "--release", "0.2.0", "--src", str(tree), "--delta-from", "0.1.0"
    )
    assert out.returncode == 0, out.stderr
    assert "staged agent/delta/camfleet-agent-0.1.0-to-0.2.0.bsdiff" in out.stdout
    out = _cli(tmp_path, "publish")
    assert "published targets version 3" in out.stdout, out.stderr
    out = _cli(tmp_path, "rotate", "--role", "root")
    assert "root is now version 2" in out.stdout, out.stderr
    out = _cli(tmp_path, "timestamp")
    assert out.returncode == 0 and "timestamp version" in out.stdout, out.stderr
    listed = _cli(tmp_path, "list").stdout
    assert "root v2  targets v3" in listed
    assert "published  agent/delta/camfleet-agent-0.1.0-to-0.2.0.bsdiff" in listed
    assert "delta from 0.1.0" in listed
    # bad input: a clear message, exit 1, nothing staged
    out = _cli(tmp_path, "add", "agent", "--release", "../evil", "--src", str(tree))
    assert out.returncode == 1 and "bad release" in out.stderr
    out = _cli(tmp_path, "add", "firmware", "--release", "1.0.0", "--file", str(tmp_path / "no"))
    assert out.returncode == 1 and "not a firmware bundle" in out.stderr
    out = _cli(tmp_path, "add", "firmware", "--release", "1.4.0", "--file", str(firmware_bundle))
    assert out.returncode == 0, out.stderr
    assert "staged firmware/camfleet-node-1.4.0.bundle" in out.stdout
    (tmp_path / "R/staged.json").unlink()  # not published: dropped
    assert not (tmp_path / "R/staged.json").exists()
    repo = TufRepo(tmp_path / "R", tmp_path / "K")
    assert [e.path for e in repo.list_targets()] == [
        "agent/camfleet-agent-0.1.0.tar.gz",
        "agent/camfleet-agent-0.2.0.tar.gz",
        "agent/delta/camfleet-agent-0.1.0-to-0.2.0.bsdiff",
    ]
