"""``camfleet-server release ...``: build, sign and publish OTA releases (docs/ota.md)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from common.cli import fail, make_app
from fleet_server.config import ServerSettings
from fleet_server.ota import release as rel
from fleet_server.ota.published import RepoError
from fleet_server.ota.settings import repo_dir_of
from fleet_server.ota.tufrepo import ROLES, TufRepo

PROG = "camfleet-server release"


_SOURCE_ROOT = Path(__file__).resolve().parents[2]

release_app = make_app("OTA releases: the TUF repository, its artifacts and keys.")
add_app = make_app("Build an artifact and stage it ('publish' makes it live).")
release_app.add_typer(add_app, name="add")

RepoOpt = Annotated[
    Path | None, typer.Option("--repo", help="TUF repository dir (default: [ota] repo_dir)")
]
KeysOpt = Annotated[
    Path | None, typer.Option("--keys", help="signing keys dir (default: [ota] keys_dir)")
]
ReleaseOpt = Annotated[str, typer.Option("--release", help="release string, e.g. 0.2.0")]


def _settings(ctx: typer.Context) -> ServerSettings:
    settings = getattr(ctx.find_root().obj, "settings", None)
    if not isinstance(settings, ServerSettings):
        fail(PROG, "internal: settings not loaded")
    return settings


def _dirs(ctx: typer.Context, repo: Path | None, keys: Path | None) -> tuple[Path, Path]:
    settings = _settings(ctx)
    repo_dir = repo or repo_dir_of(settings.ota, settings.data_dir)
    keys_dir = keys or settings.ota.keys_dir
    if keys_dir is None:
        raise RepoError("no keys directory: pass --keys or set [ota] keys_dir")
    return Path(repo_dir), Path(keys_dir)


@contextmanager
def _errors() -> Iterator[None]:
    """Repository and release errors end the command with their message and code 1."""
    try:
        yield
    except (RepoError, rel.ReleaseError, OSError) as exc:
        fail(PROG, exc)


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


@release_app.command("init")
def init(
    ctx: typer.Context,
    repo: RepoOpt = None,
    keys: KeysOpt = None,
    root_threshold: Annotated[int, typer.Option(help="root signatures needed")] = 1,
    root_keys: Annotated[int, typer.Option(help="root keys to make")] = 1,
    expiry: Annotated[
        list[str] | None,
        typer.Option(
            metavar="ROLE=DAYS",
            help="metadata lifetime per role (default root=365 targets=90 snapshot=7 "
            "timestamp=1); repeat for several roles",
        ),
    ] = None,
) -> None:
    """Create the signing keys and an empty repository (then move root-*.key offline)."""
    with _errors():
        repo_dir, keys_dir = _dirs(ctx, repo, keys)
        TufRepo.create(
            repo_dir,
            keys_dir,
            root_threshold=root_threshold,
            root_keys=root_keys,
            expiry_days=_expiries(expiry or []),
        )
    print(
        f"created TUF repository {repo_dir} (root {root_threshold}-of-{root_keys}); "
        f"keys in {keys_dir}: move root-*.key offline"
    )


def _stage(ctx: typer.Context, repo: Path | None, keys: Path | None,
           make: Callable[[TufRepo, Path], list[str]]) -> None:  # fmt: skip
    with _errors():
        tuf = TufRepo(*_dirs(ctx, repo, keys))
        with tempfile.TemporaryDirectory(prefix="camfleet-release-") as tmp:
            staged = make(tuf, Path(tmp))
    for path in staged:
        print(f"staged {path}")
    print("run 'camfleet-server release publish' to make it visible to devices")


@add_app.command("agent")
def add_agent(
    ctx: typer.Context,
    release: ReleaseOpt,
    repo: RepoOpt = None,
    keys: KeysOpt = None,
    src: Annotated[Path, typer.Option(help="source tree root")] = _SOURCE_ROOT,
    delta_from: Annotated[
        list[str] | None,
        typer.Option(
            metavar="RELEASE",
            help="also make a bsdiff4 delta from this release (already in the repository); "
            "repeat for several",
        ),
    ] = None,
) -> None:
    """Stage the agent application bundle (and deltas from earlier releases)."""
    deltas = delta_from or []
    _stage(
        ctx, repo, keys, lambda tuf, work: rel.add_agent_release(tuf, src, release, work, deltas)
    )


@add_app.command("model")
def add_model(
    ctx: typer.Context,
    release: ReleaseOpt,
    model_dir: Annotated[Path, typer.Option("--dir", help="the model bundle directory")],
    repo: RepoOpt = None,
    keys: KeysOpt = None,
) -> None:
    """Stage a model bundle directory (checked: manifest, hashes, card, evaluation set)."""
    _stage(
        ctx, repo, keys, lambda tuf, work: [rel.add_model_release(tuf, model_dir, release, work)]
    )


@add_app.command("firmware")
def add_firmware(
    ctx: typer.Context,
    release: ReleaseOpt,
    repo: RepoOpt = None,
    keys: KeysOpt = None,
    file: Annotated[
        Path | None, typer.Option(help="a firmware.bundle already built (instead of --src)")
    ] = None,
    src: Annotated[
        Path, typer.Option(help="firmware source folder to build the bundle from (mpy-cross)")
    ] = _SOURCE_ROOT / "firmware",
) -> None:
    """Stage a node firmware bundle, built from source or given as a file."""

    def make(tuf: TufRepo, work: Path) -> list[str]:
        bundle = file
        if bundle is None:
            out = work / rel.firmware_target(release).rpartition("/")[2]
            bundle = rel.build_firmware_bundle(src, release, out)
        return [rel.add_firmware_release(tuf, bundle, release)]

    _stage(ctx, repo, keys, make)


@release_app.command("publish")
def publish(ctx: typer.Context, repo: RepoOpt = None, keys: KeysOpt = None) -> None:
    """Sign the staged targets, a new snapshot and timestamp: devices see them now."""
    with _errors():
        tuf = TufRepo(*_dirs(ctx, repo, keys))
        version = tuf.publish()
        ts = tuf.timestamp().signed.version
    print(f"published targets version {version}, timestamp {ts}")


@release_app.command("timestamp")
def timestamp(ctx: typer.Context, repo: RepoOpt = None, keys: KeysOpt = None) -> None:
    """Re-sign the timestamp now (the server also does it before it expires)."""
    with _errors():
        tuf = TufRepo(*_dirs(ctx, repo, keys))
        tuf.refresh_timestamp()
        ts = tuf.timestamp().signed
    print(f"timestamp version {ts.version}, expires {ts.expires.isoformat()}")


@release_app.command("rotate")
def rotate(
    ctx: typer.Context,
    role: Annotated[
        str, typer.Option(help=f"the role whose key(s) to replace: {', '.join(ROLES)}")
    ],
    repo: RepoOpt = None,
    keys: KeysOpt = None,
) -> None:
    """Replace a role's key(s) and sign a new root that names them."""
    if role not in ROLES:
        fail(PROG, f"--role must be one of {', '.join(ROLES)}", 2)
    with _errors():
        tuf = TufRepo(*_dirs(ctx, repo, keys))
        tuf.rotate(role)
        version = tuf.root_version()
    print(f"rotated {role} key(s): root is now version {version}")


@release_app.command("list")
def list_targets(ctx: typer.Context, repo: RepoOpt = None, keys: KeysOpt = None) -> None:
    """Targets (staged and published), metadata versions and expiries."""
    with _errors():
        _list(TufRepo(*_dirs(ctx, repo, keys)))


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
