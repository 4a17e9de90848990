"""OTA delta size: bsdiff4 delta bytes over full agent bundle bytes for two consecutive
application releases (issue 6; target at most 10 %).

Release A is the current tree as 0.1.0. Release B is the same tree with a realistic small
change: one module edited in the middle (a constant changed, a helper added) and the
node firmware's version bumped, built as 0.2.0, so its manifest changes too. Both are built
by ``fleet_server.ota.release`` exactly as ``camfleet-server release add agent`` does; the
delta is made on the uncompressed tars and checked to rebuild B's bundle byte for byte.
For comparison, the detail also gives bsdiff4 run on the compressed bundles directly.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import bsdiff4

from bench.results import Figure
from fleet_server.ota import release as rel
from hil_tests.ota_rig import source_copy


def _edit(tree: Path) -> None:
    """A bug-fix release: one module changed in its middle, the version bumped."""
    mod = tree / "agent" / "link" / "backoff.py"
    lines = mod.read_text().splitlines(keepends=True)
    middle = len(lines) // 2
    lines.insert(middle, "\n# 0.2.0: retries spread a little wider after a broker restart\n")
    lines.insert(middle + 1, "_SPREAD_FACTOR = 1.25\n\n")
    mod.write_text("".join(lines))
    version = tree / "firmware" / "version.py"
    text = version.read_text()
    version.write_text(re.sub(r'VERSION = "[^"]*"', 'VERSION = "0.2.1"', text))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(work: Path) -> list[Figure]:
    work.mkdir(parents=True, exist_ok=True)
    tree = source_copy(work / "src")
    old = rel.build_agent_bundle(tree, "0.1.0", work / "a.tar.gz")
    _edit(tree)
    new = rel.build_agent_bundle(tree, "0.2.0", work / "b.tar.gz")
    t0 = time.perf_counter()
    patch = rel.make_delta(old, new, work / "a-to-b.bsdiff")
    make_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rebuilt = rel.apply_delta(old, patch, work / "rebuilt.tar.gz")
    apply_s = time.perf_counter() - t0
    if _sha(rebuilt) != _sha(new):
        raise RuntimeError("the delta did not rebuild the full bundle byte for byte")
    full = new.stat().st_size
    delta = patch.stat().st_size
    naive = len(bsdiff4.diff(old.read_bytes(), new.read_bytes()))
    return [
        Figure(
            "delta_over_full",
            delta / full,
            "ratio",
            "the full agent bundle (target <= 0.10)",
            f"delta {delta} B, full {full} B (.tar.gz; tar {len(rel.gunzip_file(new))} B); "
            f"bsdiff4 on the compressed bundles instead: {naive} B ({naive / full:.2f}); "
            f"make {make_s * 1000:.0f} ms, apply {apply_s * 1000:.0f} ms",
        )
    ]
