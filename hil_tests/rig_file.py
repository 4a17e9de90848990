"""The real rig's rig file (TOML, docs/hil.md): the fleet server, the boxes, the nodes and
how their power is switched, checked with pydantic (an unknown key is an error, as in every
camfleet config). ``hil_tests.real_rig`` drives the hardware it describes.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from firmware import contract


class RigFileError(Exception):
    """The rig file is missing, not TOML, or does not describe a rig."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RelayPower(_Strict):
    """A relay on a GPIO line of a controller reached over SSH (libgpiod's ``gpioset``)."""

    type: Literal["relay"] = Field(description="Power through a relay on a GPIO line.")
    ssh: str = Field(min_length=1, description="user@host of the relay's controller.")
    chip: str = Field("gpiochip0", min_length=1, description="GPIO chip of the line.")
    line: int = Field(ge=0, le=1023, description="GPIO line driving the relay.")
    active_low: bool = Field(
        False, description="True when driving the line low switches the power OFF."
    )


class HttpPower(_Strict):
    """A switchable PDU (or a smart plug) with one URL to switch on and one to switch off."""

    type: Literal["http"] = Field(description="Power through a PDU's HTTP interface.")
    on_url: str = Field(pattern=r"^https?://", description="Requested to switch the outlet on.")
    off_url: str = Field(pattern=r"^https?://", description="Requested to switch it off.")
    method: Literal["GET", "POST", "PUT"] = Field("POST", description="HTTP method.")
    token_env: str | None = Field(
        None, description="Environment variable holding a bearer token for the PDU."
    )


Power = Annotated[RelayPower | HttpPower, Field(discriminator="type")]


class BoxSpec(_Strict):
    id: str = Field(description="The box's device id (its certificate's CN).")
    ssh: str = Field(min_length=1, description="user@host of the box.")
    ssh_options: list[str] = Field(
        default_factory=lambda: ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"],
        description="Extra ssh options (keys, ports, jump hosts).",
    )
    service: str = Field("camfleet-agent", description="The agent's systemd unit.")
    state_dir: str = Field("/var/lib/camfleet-agent", description="The agent's state dir.")
    iface: str = Field("eth0", description="Network interface to the broker.")
    broker_port: int = Field(8883, ge=1, le=65535, description="The broker's TLS port.")
    camera_replay_dir: str | None = Field(
        None, description="Folder the agent replays as its camera (files camera), if any."
    )
    power: Power | None = Field(None, description="How the box's power is switched.")
    shutdown_s: float = Field(20.0, ge=0, le=600, description="Wait for a clean poweroff.")


class NodeSpec(_Strict):
    id: str = Field(description="The node's device id.")
    port: str = Field(min_length=1, description="Serial port of the board (mpremote connect).")
    box: str | None = Field(None, description="The box this node supervises, if any.")
    state_dir: str = Field("state", description="The firmware's state dir on the board.")
    power: Power | None = Field(None, description="How the board's power is switched.")


class ServerSpec(_Strict):
    api: str = Field(pattern=r"^https?://", description="Base URL of the fleet server's API.")
    reader_token_env: str = Field(
        "CAMFLEET_RIG_READER_TOKEN", description="Environment variable: a viewer's API token."
    )
    admin_token_env: str = Field(
        "CAMFLEET_RIG_ADMIN_TOKEN", description="Environment variable: an admin's API token."
    )
    ca: str | None = Field(None, description="CA file for an HTTPS API with a private CA.")


class RigSpec(_Strict):
    name: str = Field(min_length=1, max_length=64, description="The rig's name (reports).")
    server: ServerSpec = Field(description="The fleet server the rig's devices report to.")
    box: list[BoxSpec] = Field(default_factory=list, description="Linux boxes.")
    node: list[NodeSpec] = Field(default_factory=list, description="Cabinet nodes.")


def load_rig_file(path: Path) -> RigSpec:
    """Parse and check a rig file; RigFileError says what is wrong and where."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RigFileError(f"cannot read rig file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RigFileError(f"{path} is not TOML: {exc}") from exc
    try:
        spec = RigSpec.model_validate(raw)
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise RigFileError(f"{path}: {where}") from exc
    ids = [b.id for b in spec.box] + [n.id for n in spec.node]
    for device_id in ids:
        if not contract.valid_device_id(device_id):
            raise RigFileError(f"{path}: {device_id!r} is not a valid device id")
    if len(set(ids)) != len(ids):
        raise RigFileError(f"{path}: a device id appears twice")
    boxes = {b.id for b in spec.box}
    for n in spec.node:
        if n.box is not None and n.box not in boxes:
            raise RigFileError(f"{path}: node {n.id} supervises {n.box}, which is not a box here")
    return spec
