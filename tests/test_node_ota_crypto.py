"""The node's update checks, each case under CPython and under MicroPython (128 KiB heap,
from .mpy): ed25519 against the RFC 8032 vectors, and the pure SHA-512 against hashlib."""

from __future__ import annotations

import hashlib
import os

from firmware import ed25519
from tests.mp import ed25519_cases, harness

test_ed25519_cpython, test_ed25519_micropython = harness.both_interpreters(ed25519_cases, 12)


def test_pure_sha512_equals_hashlib_on_random_data() -> None:
    for n in (0, 1, 63, 111, 112, 128, 1000, 4099):
        data = os.urandom(n)
        assert ed25519.Sha512(data).digest() == hashlib.sha512(data).digest(), n
