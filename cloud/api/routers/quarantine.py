"""``/v1/quarantine``: devices whose feedback is kept aside, and their release."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from cloud.api.auth import AdminDep, ViewerDep
from cloud.api.deps import MODEL_PATTERN, DeviceId, FleetDep
from cloud.api.errors import error
from cloud.api.schemas import QuarantinePublic, QuarantineReleased

router = APIRouter(prefix="/v1/quarantine", tags=["quarantine"])


@router.get("", summary="List quarantined devices")
def read_quarantine(fleet: FleetDep, _: ViewerDep) -> QuarantinePublic:
    """Devices whose labels disagree with the fleet's far beyond chance: their feedback is
    kept, not trained on, and weighs nothing in the gate."""
    return fleet.read_quarantine()


@router.post(
    "/{device_id}/release",
    summary="Release a quarantined device",
    responses={404: error("Not quarantined", "device 'pi-07' is not quarantined for any model")},
)
def release_quarantine(
    device_id: DeviceId,
    fleet: FleetDep,
    who: AdminDep,
    model: Annotated[
        str | None,
        Query(pattern=MODEL_PATTERN, description="only for this model (default: every model)"),
    ] = None,
) -> QuarantineReleased:
    """The device's kept feedback is queued for training again, and its label checks start
    afresh."""
    return fleet.release_quarantine(device_id, model, who.name)
