"""OTA delta size on real history: bsdiff4 delta bytes over full agent bundle bytes between
two releases of this repository twenty commits apart (issue 6's target: at most 10 %).

The two trees are this repository's own commits, taken with ``git archive`` (the commit
``git rev-parse HEAD`` names, and its 20th first-parent ancestor), so the figure follows
what a real release cycle changes: new modules, moved ones, edited ones. Both are built by
``fleet_server.ota.release`` exactly as ``camfleet-server release add agent`` does; the
delta is made on the uncompressed tars and checked to rebuild the new bundle byte for
byte. For comparison, the detail also gives bsdiff4 run on the compressed bundles.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
import time
from pathlib import Path

import bsdiff4

from bench.results import ROOT, Figure
from fleet_server.ota import release as rel

DISTANCE = 20  # first-parent commits between the two releases
PACKAGES = ("agent", "common", "firmware")  # what an agent bundle holds


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def _tree(commit: str, dest: Path) -> Path:
    """The agent bundle's packages as they were at ``commit``."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "--", *PACKAGES],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        tar.extractall(dest, filter="data")
    return dest


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(bundle: Path) -> dict[str, str]:
    return {k: str(v) for k, v in dict(rel.read_manifest(bundle)["files"]).items()}  # type: ignore[call-overload]


def _step_ratios(chain: list[str], work: Path) -> list[float]:
    """delta / full for every release one commit apart along ``chain`` (newest first)."""
    ratios: list[float] = []
    prev: Path | None = None
    for i, commit in enumerate(reversed(chain)):
        bundle = rel.build_agent_bundle(
            _tree(commit, work / f"t{i}"), f"0.0.{i}", work / f"s{i}.tar.gz"
        )
        if prev is not None:
            patch = rel.make_delta(prev, bundle, work / f"s{i}.bsdiff")
            ratios.append(patch.stat().st_size / bundle.stat().st_size)
        prev = bundle
    return ratios


def run(work: Path) -> list[Figure]:
    work.mkdir(parents=True, exist_ok=True)
    chain = _git("rev-list", "--first-parent", f"--max-count={DISTANCE + 1}", "HEAD").split()
    if len(chain) <= DISTANCE:
        raise RuntimeError(f"the history has {len(chain)} commits, {DISTANCE + 1} needed")
    new_commit, old_commit = chain[0], chain[DISTANCE]
    old_release, new_release = f"1.0.0+g{old_commit[:7]}", f"1.1.0+g{new_commit[:7]}"
    old = rel.build_agent_bundle(_tree(old_commit, work / "old"), old_release, work / "a.tar.gz")
    new = rel.build_agent_bundle(_tree(new_commit, work / "new"), new_release, work / "b.tar.gz")
    t0 = time.perf_counter()
    patch = rel.make_delta(old, new, work / "a-to-b.bsdiff")
    make_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rebuilt = rel.apply_delta(old, patch, work / "rebuilt.tar.gz")
    apply_s = time.perf_counter() - t0
    if _sha(rebuilt) != _sha(new):
        raise RuntimeError("the delta did not rebuild the full bundle byte for byte")
    before, after = _files(old), _files(new)
    changed = sum(1 for k in after if k in before and before[k] != after[k])
    added = len(after.keys() - before.keys())
    removed = len(before.keys() - after.keys())
    full = new.stat().st_size
    delta = patch.stat().st_size
    naive = len(bsdiff4.diff(old.read_bytes(), new.read_bytes()))
    steps = sorted(_step_ratios(chain, work / "steps"))
    dates = _git("show", "-s", "--format=%ad", "--date=short", old_commit, new_commit).split()
    return [
        Figure(
            "delta_over_full",
            delta / full,
            "ratio",
            "the full agent bundle (target <= 0.10)",
            f"{DISTANCE} commits of this repository: {old_commit[:7]} ({dates[0]}) -> "
            f"{new_commit[:7]} ({dates[-1]}); bundle files changed {changed}, added {added}, "
            f"removed {removed} of {len(after)}; delta {delta} B, full {full} B (.tar.gz; tar "
            f"{len(rel.gunzip_file(new))} B); bsdiff4 on the compressed bundles instead: "
            f"{naive} B ({naive / full:.2f}); make {make_s * 1000:.0f} ms, apply "
            f"{apply_s * 1000:.0f} ms; one commit apart, over the same {DISTANCE}: median "
            f"{steps[len(steps) // 2]:.4f}, largest {steps[-1]:.4f}",
        )
    ]
