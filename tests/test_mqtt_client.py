"""firmware/mqtt.py byte for byte against a fake byte stream: every case of
tests/mp/mqtt_cases.py runs here under CPython and, in one process, under MicroPython."""

from __future__ import annotations

from tests.mp import harness, mqtt_cases

test_cpython, test_micropython_runs_every_case = harness.both_interpreters(mqtt_cases, 25)
