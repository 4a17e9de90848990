"""The people's side of loss accounting: ``GET /api/devices/{id}/delivery`` and the device
page's "Event delivery" section."""

from __future__ import annotations

from html import escape
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.access.auth import AUTH_RESPONSES, READERS, require_role
from fleet_server.dashboard.views import Section
from fleet_server.receipts import store


class DeliveryOut(BaseModel):
    epoch: str = Field(description="The device's current event stream")
    top: int = Field(description="Highest event seq held (-1: none)")
    contiguous: int = Field(description="Highest seq below which nothing is missing")
    holes: list[list[float]] = Field(description="Open holes: [lo, hi, first seen (Unix s)]")
    open: int = Field(description="Event seqs missing now, not yet counted lost")
    lost: int = Field(description="Event seqs counted lost (holes older than lost_after_s)")
    lost_ranges: list[list[int]] = Field(description="The latest ranges counted lost")
    late: int = Field(description="Events counted lost that arrived after all")
    refused: int = Field(description="Events the device refused at the source (disk full)")
    dropped: int = Field(description="Events the device's outbox dropped for its budget")
    unreceipted: int = Field(description="Events the device sent and holds without receipt")
    updated_at: float = Field(description="Last change (Unix s)")


def router(sessions: sessionmaker[Session]) -> APIRouter:
    r = APIRouter(tags=["devices"])

    @r.get(
        "/api/devices/{device_id}/delivery",
        response_model=DeliveryOut,
        dependencies=[Depends(require_role(*READERS))],
        responses={**AUTH_RESPONSES, 404: {"description": "No event stream for this device"}},
    )
    def delivery(
        device_id: Annotated[str, Path(min_length=3, max_length=64, pattern=r"^[a-z0-9-]+$")],
    ) -> dict[str, Any]:
        """Event delivery of one device: what the server holds, what is missing, what was
        lost, what the device refused (issue 14; docs/protocol.md, receipts)."""
        with sessions() as db:
            got = store.get(db, device_id)
        if got is None:
            raise HTTPException(404, "no event stream for this device")
        return got

    return r


def delivery_section(db: Session, device_id: str) -> Section | None:
    got = store.get(db, device_id)
    if got is None:
        return None
    holes = ", ".join(f"{int(h[0])}-{int(h[1])}" for h in got["holes"][:8]) or "none"
    cls = ' class="state state-offline"' if got["lost"] else ""
    return Section(
        "Event delivery",
        f'<p id="delivery">held up to seq {got["contiguous"]} (highest {got["top"]}) · '
        f"missing now {got['open']} (holes {escape(holes)}) · "
        f"<span{cls}>lost {got['lost']}</span> · late {got['late']} · "
        f"refused at the source {got['refused']} · dropped for budget {got['dropped']} · "
        f"sent, no receipt yet {got['unreceipted']}</p>",
    )
