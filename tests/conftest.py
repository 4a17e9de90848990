"""Shared fixtures: a real CA, a real TLS Mosquitto on a free port, device credentials."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
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


def _pg_admin_url() -> str:
    return os.environ.get("CAMFLEET_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: SQLite in tmp, or a new PostgreSQL database.

    PostgreSQL is skipped when no server answers, unless CAMFLEET_REQUIRE_PG=1 (CI sets it,
    after starting one), where its absence fails the run.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    import psycopg

    name = f"camfleet_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(_pg_admin_url(), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CAMFLEET_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL required but not reachable: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = _pg_admin_url().rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(_pg_admin_url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's, never a download


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium, headless, driven by Playwright (one per test module)."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is not installed (scripts/setup-system.sh installs it)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        yield b
        b.close()
