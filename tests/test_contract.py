"""firmware/contract.py under both interpreters: every case of tests/mp/contract_cases.py
runs here under CPython (one test each) and, in one process, under real MicroPython."""

from __future__ import annotations

from tests.mp import contract_cases, harness

test_cpython, test_micropython_runs_every_case = harness.both_interpreters(contract_cases, 30)
