"""firmware/contract.py under both interpreters: every case of tests/mp/contract_cases.py
runs here under CPython (one test each) and, in one process, under real MicroPython."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mp import contract_cases, harness

CASES = harness.cases(contract_cases)


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[n for n, _ in CASES])
def test_cpython(case: Callable[[], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(harness.TMP_ENV, str(tmp_path))
    case()


def test_micropython_runs_every_case(tmp_path: Path) -> None:
    assert len(CASES) >= 30
    harness.assert_all_passed(contract_cases, tmp_path)
