"""Schemathesis against the running server's OpenAPI document: no input makes a 5xx, and
every answer fits the schema. Bounded: a few examples per operation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from fleet_server.identity.ca import CertificateAuthority
from hil_tests.identity import IdentityServer
from hil_tests.procs import Broker

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]  # fmt: skip


@pytest.fixture(scope="module")
def api_server(
    broker: Broker, ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IdentityServer]:
    srv = IdentityServer(tmp_path_factory.mktemp("fuzz"), ca, broker)
    srv.start_all()
    yield srv
    assert srv.alive(), "the server died under fuzzing"
    srv.stop()


@pytest.mark.parametrize("as_admin", [False, True], ids=["no-token", "admin"])
def test_api_has_no_server_errors(api_server: IdentityServer, as_admin: bool) -> None:
    """Each operation gets its own bounded Hypothesis run (schemathesis's pytest plugin does
    not run under pytest 9, so the operations are driven from here), once without a token
    (every protected route must say 401, documented) and once as an admin."""
    headers = {"Authorization": f"Bearer {api_server.admin_token}"} if as_admin else {}
    schema = schemathesis.openapi.from_url(api_server.base_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)  # fmt: skip
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS, headers=headers)

        check()
