"""firmware/mqtt.py byte for byte against a fake byte stream: every case of
tests/mp/mqtt_cases.py runs here under CPython and, in one process, under MicroPython."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mp import harness, mqtt_cases

CASES = harness.cases(mqtt_cases)


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[n for n, _ in CASES])
def test_cpython(case: Callable[[], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(harness.TMP_ENV, str(tmp_path))
    case()


def test_micropython_runs_every_case(tmp_path: Path) -> None:
    assert len(CASES) >= 25
    harness.assert_all_passed(mqtt_cases, tmp_path)
