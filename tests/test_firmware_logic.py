"""The firmware's deciding parts, each case under CPython and, in one process per module,
under MicroPython with a 128 KiB heap (from .mpy): config, the event ring, commands, the
box supervisor, the cabinet's sensor events, the simulated board and the SHT3x driver."""

from __future__ import annotations

from tests.mp import (
    cabinet_cases,
    commands_cases,
    config_cases,
    hal_cases,
    harness,
    ring_cases,
    supervisor_cases,
)

test_config_cpython, test_config_micropython = harness.both_interpreters(config_cases, 7)
test_ring_cpython, test_ring_micropython = harness.both_interpreters(ring_cases, 6)
test_commands_cpython, test_commands_micropython = harness.both_interpreters(commands_cases, 5)
test_supervisor_cpython, test_supervisor_micropython = harness.both_interpreters(
    supervisor_cases, 8
)
test_cabinet_cpython, test_cabinet_micropython = harness.both_interpreters(cabinet_cases, 6)
test_hal_cpython, test_hal_micropython = harness.both_interpreters(hal_cases, 10)
