"""Run a case module under CPython (one pytest test per case) and under real MicroPython."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from firmware.build import mpy_cross_bin
from hil_tests.procs import REPO, micropython_bin

TMP_ENV = "MP_CASES_TMP"
HEAP = "128k"  # the heap of a small microcontroller
RUNNER = Path(__file__).with_name("run.py")


def cases(module: ModuleType) -> list[tuple[str, Callable[[], None]]]:
    found = [(n, f) for n, f in vars(module).items() if n.startswith("test_") and callable(f)]
    return sorted(found)


@dataclass
class MicroPythonRun:
    passed: list[str]
    failed: list[str]
    summary: tuple[int, int] | None
    returncode: int
    output: str


# CPython-only files that are never compiled for MicroPython
_NOT_FOR_MICROPYTHON = {"build.py", "manifest.py", "harness.py", "run.py"}


def mpy_tree(out: Path) -> Path:
    """firmware/ and tests/mp/ compiled to .mpy under ``out`` (what the runner imports).

    Compiling this much source inside a 128 KiB heap does not fit; a board loads .mpy
    too. Packages keep their names, so ``from firmware import node`` finds the .mpy.
    """
    tool = mpy_cross_bin()
    for package in ("firmware", "tests", "tests/mp"):
        (out / package).mkdir(parents=True, exist_ok=True)
        (out / package / "__init__.py").write_text("")
        for src in sorted((REPO / package).glob("*.py")):
            if src.name in _NOT_FOR_MICROPYTHON or src.name == "__init__.py":
                continue
            if package == "tests" and not src.name.startswith("__"):
                continue  # only the package marker of tests/
            target = out / package / (src.stem + ".mpy")
            subprocess.run(
                [tool, "-o", str(target), "-s", f"{package}/{src.name}", str(src)],
                check=True,
                capture_output=True,
                timeout=60,
            )
    return out


def run_micropython(
    module: ModuleType, tmp: Path, timeout: float = 60, heap: str = HEAP
) -> MicroPythonRun:
    """Run every case of ``module`` in one ``micropython -X heapsize=128k`` process (or
    ``heap``), from .mpy compiled into ``tmp`` (see mpy_tree)."""
    env = dict(os.environ, **{TMP_ENV: str(tmp)})
    root = mpy_tree(tmp / "mpy")
    proc = subprocess.run(
        [micropython_bin(), "-X", f"heapsize={heap}", str(RUNNER), str(root), module.__name__],
        capture_output=True,
        timeout=timeout,
        env=env,
        cwd=tmp,
        check=False,
    )
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    prefix = module.__name__ + "."
    passed = [m[len(prefix) :] for m in re.findall(r"^PASS (\S+)$", out, re.M)]
    failed = re.findall(r"^FAIL (\S+?):", out, re.M)
    found = re.search(r"^(\d+) passed, (\d+) failed$", out, re.M)
    summary = (int(found.group(1)), int(found.group(2))) if found else None
    return MicroPythonRun(passed, failed, summary, proc.returncode, out)


def both_interpreters(
    module: ModuleType, min_cases: int, heap: str = HEAP
) -> tuple[Callable[..., None], Callable[[Path], None]]:
    """The two tests a case module gets: each case under CPython, all under MicroPython.

    Use as ``test_cpython, test_micropython_runs_every_case = both_interpreters(mod, n)``.
    ``heap`` is for case modules that load the whole node plus their own scaffolding; the
    firmware's own 128 KiB budget is proven by the real node processes (hil_tests/node.py).
    """
    found = cases(module)

    @pytest.mark.parametrize("case", [c for _, c in found], ids=[n for n, _ in found])
    def test_cpython(
        case: Callable[[], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(TMP_ENV, str(tmp_path))
        case()

    def test_micropython_runs_every_case(tmp_path: Path) -> None:
        assert len(found) >= min_cases
        assert_all_passed(module, tmp_path, heap)

    return test_cpython, test_micropython_runs_every_case


def assert_all_passed(module: ModuleType, tmp: Path, heap: str = HEAP) -> MicroPythonRun:
    """Every case of ``module`` ran and passed under MicroPython, and nothing else ran."""
    names = [name for name, _ in cases(module)]
    run = run_micropython(module, tmp, heap=heap)
    assert run.failed == [], run.output
    assert run.summary == (len(names), 0), run.output
    assert sorted(run.passed) == names, run.output
    assert run.returncode == 0, run.output
    return run
