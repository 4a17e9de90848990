"""The updater's errors. Every refusal carries a wire reason (``update_state.error`` is
``"<reason>: <detail>"``); third-party errors (python-tuf, urllib3, OS) are translated into
these where they are caught."""

from __future__ import annotations

from agent.errors import AgentError

# Reasons on the wire (docs/ota.md, "Install on the agent").
BAD_SIGNATURE = "bad_signature"
EXPIRED = "expired"
DOWNGRADE = "downgrade"
BAD_HASH = "bad_hash"
TOO_LARGE = "too_large"
ACCURACY_GATE = "accuracy_gate"
UNHEALTHY = "unhealthy"
DOWNLOAD = "download"
BAD_METADATA = "bad_metadata"
UNKNOWN_TARGET = "unknown_target"
BAD_BUNDLE = "bad_bundle"
LOOP_GUARD = "loop_guard"
INSTALL = "install"


class OtaError(AgentError):
    """An update step failed; ``reason`` is the wire reason, ``detail`` says what happened."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    @property
    def wire(self) -> str:
        """``"<reason>: <detail>"``, cut to the contract's string limit."""
        return f"{self.reason}: {self.detail}"[:256]


class SlotError(OtaError):
    """The release directories or the ``current`` link are not as they must be."""

    def __init__(self, detail: str) -> None:
        super().__init__(INSTALL, detail)
