"""make bench: run every benchmark, write bench/results.json and the README table."""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import sys
import traceback
from pathlib import Path

from bench.results import ROOT, Figure, previous, write

WORK = ROOT / "bench" / "work"


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.run [bench_name ...]``: all benches, or the named ones, whose
    figures then replace the same-named ones already in bench/results.json. The file is
    written after each bench, so one that fails loses nothing another measured; it keeps
    its previous figures, is named, and the run exits 1."""
    wanted = sys.argv[1:] if argv is None else argv
    figures: list[Figure] = previous()
    shutil.rmtree(WORK, ignore_errors=True)
    names = sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith("bench_") and (not wanted or m.name in wanted)
    )
    failed: list[str] = []
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"== {name}", flush=True)
        try:
            got: list[Figure] = module.run(WORK / name)
        except Exception:  # any failure: report it, go on with the others
            traceback.print_exc()
            print(f"   {name} FAILED: its previous figures are kept", flush=True)
            failed.append(name)
            continue
        for f in got:
            print(f"   {f.name} = {f.value:.4g} {f.unit}  ({f.detail})", flush=True)
        fresh = {f.name for f in got}
        figures = [f for f in figures if f.name not in fresh] + got
        write(figures)
    print(f"wrote {ROOT / 'bench' / 'results.json'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
