"""Shared fixtures: a real CA, a real TLS Mosquitto on a free port, device credentials."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleet_server.ca import CertificateAuthority, DeviceCredentials
from hil_tests.procs import Broker


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    authority = CertificateAuthority(tmp_path_factory.mktemp("pki"))
    authority.init()
    return authority


@pytest.fixture(scope="session")
def broker(ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One TLS Mosquitto for the session (tests that restart a broker start their own)."""
    b = Broker(ca, tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def device_factory(
    ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], DeviceCredentials]]:
    made: dict[str, DeviceCredentials] = {}
    root = tmp_path_factory.mktemp("devices")

    def make(device_id: str) -> DeviceCredentials:
        if device_id not in made:
            made[device_id] = ca.issue_device(device_id, root / device_id)
        return made[device_id]

    yield make
