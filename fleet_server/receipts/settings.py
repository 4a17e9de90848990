"""The ``[receipts]`` section of the server config."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ReceiptSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    send: bool = Field(
        True,
        description="Send a receipt to each device after every committed batch that held "
        "events of it (devices that speak receipts delete an event only on its receipt)",
    )
    lost_after_s: float = Field(
        600.0,
        gt=0,
        le=30 * 86400,
        description="A hole in a device's event sequence open this long is counted lost, "
        "seconds (devices resend unreceipted events within a few minutes)",
    )
    check_interval_s: float = Field(
        10.0, gt=0, le=3600, description="How often open holes are looked at, seconds"
    )
