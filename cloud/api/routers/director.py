"""``/v1/director``: the director's signed orders for a device, for edges without Redis."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.api.auth import ReaderDep, check_reads_device
from cloud.api.deps import DeviceId, ModelName, TufDep
from cloud.api.schemas import DirectorOrdersPublic

router = APIRouter(prefix="/v1/director", tags=["director"])


@router.get("/{model}/{device_id}", summary="Get the orders a device follows for a model")
def read_orders(
    model: ModelName, device_id: DeviceId, tuf: TufDep, who: ReaderDep
) -> DirectorOrdersPublic:
    """The device's own and the fleet's signed orders, as stored (the edge verifies them and
    keeps the highest counter), and the unsigned target, assignment and pin that edges
    without director keys follow. A device token reads its own device's only."""
    check_reads_device(who, device_id)
    return tuf.orders(model, device_id)
