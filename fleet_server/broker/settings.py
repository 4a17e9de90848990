"""Settings of the broker the server renders and runs (``[broker]`` in server.toml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from firmware import contract


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BrokerSettings(_Section):
    listen_port: int = Field(8883, ge=1, le=65535, description="Port Mosquitto listens on")
    bind: str = Field("127.0.0.1", description="Address Mosquitto binds to")
    hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "::1"],
        description="Names and addresses put in the broker certificate",
    )
    log_stderr: bool = Field(
        False,
        description="Mosquitto logs to standard error (journald under systemd) instead of "
        "broker/mosquitto.log",
    )
    pairs: dict[str, str] = Field(
        default_factory=dict,
        description="Cabinet node id -> the edge box id it supervises: the ACL lets each "
        "node read that box's heartbeats (docs/firmware.md)",
    )

    @field_validator("pairs")
    @classmethod
    def _device_ids(cls, pairs: dict[str, str]) -> dict[str, str]:
        for node, box in pairs.items():
            if not (contract.valid_device_id(node) and contract.valid_device_id(box)):
                raise ValueError(f"pair {node!r} -> {box!r}: both must be device ids")
            if node == box:
                raise ValueError(f"{node!r} cannot supervise itself")
        return pairs
