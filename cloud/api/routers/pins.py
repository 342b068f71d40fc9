"""``/v1/devices/{device_id}/pin``: hold a device on a version; rollouts leave it alone."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from cloud.api.auth import AdminDep
from cloud.api.deps import MODEL_PATTERN, DeviceId, RolloutsDep
from cloud.api.errors import error
from cloud.api.schemas import PinCreate, PinPublic, PinsRemoved

router = APIRouter(prefix="/v1/devices/{device_id}/pin", tags=["pins"])


@router.put(
    "",
    summary="Pin a device to a version",
    responses={404: error("Unknown model or version", "digits has no version 9")},
)
def update_pin(device_id: DeviceId, pin: PinCreate, view: RolloutsDep, who: AdminDep) -> PinPublic:
    """The device serves this version whatever the fleet's target or a rollout says, until
    unpinned (it is told at once on the delta stream)."""
    return view.pin_device(device_id, pin.model, pin.version, who.name)


@router.delete(
    "",
    summary="Unpin a device",
    responses={404: error("Not pinned", "device 'pi-07' is not pinned to any model")},
)
def delete_pin(
    device_id: DeviceId,
    view: RolloutsDep,
    who: AdminDep,
    model: Annotated[
        str | None,
        Query(pattern=MODEL_PATTERN, description="only this model's pin (default: every model's)"),
    ] = None,
) -> PinsRemoved:
    return view.unpin_device(device_id, model, who.name)
