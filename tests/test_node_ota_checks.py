"""The node's update checks on real TUF metadata (fleet_server.ota.tufrepo, python-tuf) and
a real firmware bundle: each case of tests/mp/ota_cases.py under CPython, then all of them
under MicroPython (128 KiB heap, from .mpy) on the same fixture files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from securesystemslib.formats import encode_canonical

from firmware import canonjson
from tests import ota_helpers
from tests.mp import harness, ota_cases


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ota-cases")
    ota_helpers.write_fixtures(root / "fixtures")
    return root


_CASES = harness.cases(ota_cases)


@pytest.mark.parametrize("case", [c for _, c in _CASES], ids=[n for n, _ in _CASES])
def test_cpython(case: Callable[[], None], fixtures: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(harness.TMP_ENV, str(fixtures))
    case()


def test_micropython_runs_every_case(fixtures: Path) -> None:
    assert len(_CASES) >= 21
    # the cases load the install boot's modules, the updater and boot.py beside their own
    # scaffolding: 192 KiB; the install boot itself runs in 128 KiB in tests/test_node_ota.py
    harness.assert_all_passed(ota_cases, fixtures, heap="192k")


def test_canonical_json_equals_securesystemslib_for_every_role(fixtures: Path) -> None:
    import json

    meta = fixtures / "fixtures" / "tuf" / "repo" / "metadata"
    files = sorted(meta.glob("*.json"))
    assert {p.name.split(".")[-2] for p in files} >= {"root", "targets", "snapshot", "timestamp"}
    for path in files:
        signed = json.loads(path.read_text())["signed"]
        assert canonjson.encode(signed) == encode_canonical(signed).encode(), path.name  # type: ignore[union-attr]
