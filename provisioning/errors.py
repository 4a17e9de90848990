"""The provisioning tool's one error hierarchy. Each error carries the next step for the
technician (``hint``), which the CLI prints under the failure."""

from __future__ import annotations


class ProvisionError(Exception):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class TransportError(ProvisionError):
    """The box or node could not be reached or written."""


class ApiError(ProvisionError):
    """The fleet server refused a request (status and its reason)."""

    def __init__(self, message: str, status: int, hint: str = "") -> None:
        super().__init__(message, hint)
        self.status = status


class Unreachable(ProvisionError):
    """The fleet server could not be reached (work offline: records are queued)."""
