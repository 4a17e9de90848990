"""Which files are the fleet server's state, under which archive names, and where they go
back on restore (the target server's own settings: another state directory works).

- ``pki/...``: the CA (``pki_dir``), but ``root.key``: the root CA's key belongs offline;
- ``broker/...``: ``data_dir/broker``, but its log and pid file (config and ACL are
  written again for the restored server's paths);
- ``ota/repo/...``: the TUF repository (``[ota] repo_dir``);
- ``ota/keys/...``: ``[ota] keys_dir`` (online keys, expiry policy), but ``root-*.key``:
  TUF root keys belong offline.

Temporary files (a write in progress) are never taken.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fleet_server.config import ServerSettings
from fleet_server.ota.settings import repo_dir_of

_TEMPORARY = ("*.tmp", "*.tmp-*", ".*.tmp", "*.new")


@dataclass(frozen=True)
class Part:
    """One directory of state: its archive prefix, where it is, and what stays out of it
    (glob patterns of names relative to it, each with the reason)."""

    prefix: str
    path: Path
    leave_out: tuple[tuple[str, str], ...] = ()
    mode: int = 0o750  # of the directory when a restore makes it

    def reason_to_skip(self, rel: str) -> str | None:
        name = rel.rsplit("/", 1)[-1]
        for pattern, why in self.leave_out:
            if fnmatch.fnmatch(rel, pattern):
                return why
        if any(fnmatch.fnmatch(name, p) for p in _TEMPORARY):
            return ""  # a write in progress: nothing to report
        return None

    def files(self) -> Iterator[tuple[str, Path]]:
        """(relative name, path) of every regular file under the directory, sorted."""
        if not self.path.is_dir():
            return
        for path in sorted(self.path.rglob("*")):
            if path.is_file() and not path.is_symlink():
                yield path.relative_to(self.path).as_posix(), path


ROOT_KEY_WHY = "the CA's root key: keep it offline (docs/identity.md)"
TUF_ROOT_WHY = "a TUF root key: keep it offline (docs/ota.md)"


def parts(settings: ServerSettings) -> list[Part]:
    out = [
        Part("pki", settings.pki_dir, (("root.key", ROOT_KEY_WHY),), 0o700),
        Part(
            "broker",
            settings.broker_dir,
            (("mosquitto.log*", "the broker's log"), ("mosquitto.pid", "a pid")),
        ),
        Part("ota/repo", repo_dir_of(settings.ota, settings.data_dir)),
    ]
    if settings.ota.keys_dir is not None:
        out.append(
            Part(
                "ota/keys",
                settings.ota.keys_dir,
                (("root-*.key*", TUF_ROOT_WHY), (".lock", "the writers' lock")),
                0o700,
            )
        )
    return out


def part_of(name: str, all_parts: list[Part]) -> tuple[Part, str] | None:
    """The part an archive name belongs to and the name relative to it."""
    for part in sorted(all_parts, key=lambda p: -len(p.prefix)):
        if name.startswith(part.prefix + "/"):
            return part, name[len(part.prefix) + 1 :]
    return None


def state_found(settings: ServerSettings) -> list[str]:
    """What makes a server not fresh for a restore: a CA, releases, signing keys, a broker
    persistence file. (The database is checked by ``database.check_empty``.)"""
    found: list[str] = []
    pki = settings.pki_dir
    if (pki / "issuing.key").exists() or (pki / "root.pem").exists():
        found.append(f"a CA in {pki}")
    repo = repo_dir_of(settings.ota, settings.data_dir)
    if (repo / "metadata").is_dir() and any((repo / "metadata").iterdir()):
        found.append(f"a release repository in {repo}")
    keys = settings.ota.keys_dir
    if keys is not None and keys.is_dir() and any(keys.glob("*.key")):
        found.append(f"signing keys in {keys}")
    persistence = settings.broker_dir / "data" / "mosquitto.db"
    if persistence.exists():
        found.append(f"a broker persistence file {persistence}")
    return found
