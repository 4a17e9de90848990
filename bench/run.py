"""make bench: run every benchmark, write bench/results.json and the README table."""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import sys
from pathlib import Path

from bench.results import ROOT, Figure, write

WORK = ROOT / "bench" / "work"


def main() -> int:
    figures: list[Figure] = []
    shutil.rmtree(WORK, ignore_errors=True)
    names = sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith("bench_")
    )
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"== {name}", flush=True)
        got: list[Figure] = module.run(WORK / name)
        for f in got:
            print(f"   {f.name} = {f.value:.4g} {f.unit}  ({f.detail})", flush=True)
        figures.extend(got)
    write(figures)
    print(f"wrote {ROOT / 'bench' / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
