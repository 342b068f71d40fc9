"""``/v1/fleet``: how many devices serve which version, and how healthy they are."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.api.auth import ViewerDep
from cloud.api.deps import FleetDep
from cloud.api.schemas import FleetPublic

router = APIRouter(prefix="/v1/fleet", tags=["fleet"])


@router.get("", summary="Summarize the fleet")
def read_fleet(fleet: FleetDep, _: ViewerDep) -> FleetPublic:
    """Device counts by served version and by health, and each model's target and rollout."""
    return fleet.read_fleet()
