"""Request parameters the API routes share: a device id in a path or a query."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from firmware import contract

# The contract's device-id rule (contract.valid_device_id) as a pattern for OpenAPI.
DEVICE_ID_PATTERN = rf"^[a-z0-9][a-z0-9-]{{{contract.ID_MIN - 2},{contract.ID_MAX - 2}}}[a-z0-9]$"

DeviceId = Annotated[
    str,
    Path(min_length=contract.ID_MIN, max_length=contract.ID_MAX, pattern=DEVICE_ID_PATTERN,
         description="Device id"),
]  # fmt: skip

DeviceFilter = Annotated[
    str | None,
    Query(min_length=contract.ID_MIN, max_length=contract.ID_MAX, pattern=DEVICE_ID_PATTERN,
          description="Only this device"),
]  # fmt: skip
