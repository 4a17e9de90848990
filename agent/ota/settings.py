"""The ``[ota]`` table of the agent's config: where releases come from and how they install."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.ota.model_gate_settings import ModelGateSettings


class OtaSettings(BaseModel):
    """Over-the-air updates of the agent (and its model) through TUF (docs/ota.md)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Whether update_desired messages are acted on.")
    metadata_url: str = Field(
        description="Base URL of the TUF metadata, e.g. https://fleet.example/ota/metadata/."
    )
    targets_url: str = Field(
        description="Base URL of the TUF targets, e.g. https://fleet.example/ota/targets/."
    )
    ca: Path | None = Field(
        None,
        description="PEM of the CA that signed the update server's HTTPS certificate; "
        "absent: the MQTT CA.",
    )
    trusted_root: Path = Field(
        description="The pinned TUF root (1.root.json of the repository), written at "
        "provisioning; later roots are fetched and verified from it."
    )
    slots_dir: Path = Field(
        description="Base of the release directories: releases/<release>/, the current "
        "link and the bundles kept for deltas."
    )
    backend: Literal["slots", "rauc"] = Field(
        "slots",
        description="slots: release directories and a link (application A/B); rauc: "
        "whole-image A/B through the rauc command.",
    )
    trial_s: float = Field(
        300.0,
        ge=1,
        le=86400,
        description="Seconds a new release has to prove healthy when update_desired gives "
        "no trial_s; not healthy by then: it is rolled back.",
    )
    trial_heartbeats: int = Field(
        3,
        ge=1,
        le=1000,
        description="Heartbeats the new release must publish (connected, pipeline running) "
        "before it is committed.",
    )
    max_trial_boots: int = Field(
        3,
        ge=1,
        le=100,
        description="Starts of a new release during its trial (crashes) before it is "
        "rolled back without waiting for the deadline.",
    )
    max_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description="Install attempts of one release in one campaign (crashes included); "
        "then it is refused (loop_guard) until another update_desired arrives.",
    )
    max_target_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="Largest target accepted (bytes), whatever the metadata says.",
    )
    download_retries: int = Field(
        5, ge=0, le=100, description="Resumed download attempts after a dropped link."
    )
    timeout_s: float = Field(
        30.0, gt=0, le=600, description="HTTP connect and read timeout (seconds)."
    )
    model_slots_dir: Path | None = Field(
        None,
        description="Base of the model release directories (models/<release>/, current); "
        "absent: model updates are refused.",
    )
    model_gate: ModelGateSettings = Field(
        default_factory=ModelGateSettings,
        description="Limits a new model must stay within before it replaces the current one.",
    )
