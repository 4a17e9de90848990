"""The contract's shape bounds under both interpreters (tests/mp/shape_cases.py), with the
corpus of hostile inputs in tests/corpus/contract/ replayed by each (issue 15)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.mp import harness, shape_cases

CORPUS = Path(__file__).resolve().parent / "corpus" / "contract"
os.environ.setdefault("CAMFLEET_CORPUS", str(CORPUS))

test_cpython, test_micropython_runs_every_case = harness.both_interpreters(shape_cases, 8)
