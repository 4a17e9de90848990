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


def run_micropython(module: ModuleType, tmp: Path, timeout: float = 60) -> MicroPythonRun:
    """Run every case of ``module`` in one ``micropython -X heapsize=128k`` process."""
    env = dict(os.environ, **{TMP_ENV: str(tmp)})
    proc = subprocess.run(
        [micropython_bin(), "-X", f"heapsize={HEAP}", str(RUNNER), str(REPO), module.__name__],
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
    module: ModuleType, min_cases: int
) -> tuple[Callable[..., None], Callable[[Path], None]]:
    """The two tests a case module gets: each case under CPython, all under MicroPython.

    Use as ``test_cpython, test_micropython_runs_every_case = both_interpreters(mod, n)``.
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
        assert_all_passed(module, tmp_path)

    return test_cpython, test_micropython_runs_every_case


def assert_all_passed(module: ModuleType, tmp: Path) -> MicroPythonRun:
    """Every case of ``module`` ran and passed under MicroPython, and nothing else ran."""
    names = [name for name, _ in cases(module)]
    run = run_micropython(module, tmp)
    assert run.failed == [], run.output
    assert run.summary == (len(names), 0), run.output
    assert sorted(run.passed) == names, run.output
    assert run.returncode == 0, run.output
    return run
