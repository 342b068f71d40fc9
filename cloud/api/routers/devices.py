"""``/v1/devices``: every device's last report, and status reports over HTTP."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from cloud.api.auth import PrincipalDep, ViewerDep, check_device
from cloud.api.deps import DeviceId, FleetDep, RelayDep, SettingsDep
from cloud.api.errors import error
from cloud.api.schemas import DevicePublic, DevicesPublic, StatusAccepted
from shared.errors import InputError
from shared.messages import EdgeStatus
from shared.signed_relay import RelayedStatus

router = APIRouter(prefix="/v1/devices", tags=["devices"])


#: The most devices one page of ``GET /v1/devices`` holds.
MAX_PAGE = 500


@router.get(
    "",
    summary="List devices",
    responses={422: error("Bad page", "Input should be less than or equal to 500")},
)
def list_devices(
    fleet: FleetDep,
    _: ViewerDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> DevicesPublic:
    """Devices by last report, newest first, from ``offset``: health, serving and desired
    version, counters. With ``cursor`` ("" to start, then each reply's ``next_cursor``)
    the pages go by device id and a walk sees every device once, even while they report."""
    if cursor is not None and offset:
        raise InputError("give cursor or offset, not both")
    return fleet.list_devices(limit, offset, cursor)


@router.get(
    "/{device_id}",
    summary="Get a device",
    responses={404: error("Never heard of", "fleet default has no device 'pi-99'")},
)
def read_device(device_id: DeviceId, fleet: FleetDep, _: ViewerDep) -> DevicePublic:
    return fleet.read_device(device_id)


@router.post(
    "/{device_id}/status",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Report a device's status (edges without Redis)",
    responses={
        422: error(
            "Malformed report, or another device's", "status is for device 'pi-08', not 'pi-07'"
        )
    },
)
def create_status(
    device_id: DeviceId,
    report: EdgeStatus,
    relay: RelayDep,
    settings: SettingsDep,
    who: PrincipalDep,
) -> StatusAccepted:
    """What ``edgeloop-edge``'s status reporter writes to Redis, written for it: the status
    stream, the device key (expires after ``device_status_ttl_s``) and the device index.
    A device token posts for its own device only."""
    check_device(who, device_id)
    if report.device_id != device_id:
        raise InputError(f"status is for device {report.device_id!r}, not {device_id!r}")
    relay.write_status(report, settings.device_status_ttl_s, settings.status_stream_maxlen)
    return StatusAccepted(device_id=device_id, ttl_s=settings.device_status_ttl_s)


@router.post(
    "/{device_id}/status/signed",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Relay a device's signed status report (enrolled edges without Redis)",
    responses={
        403: error("Another device's report", "this token may post for device 'pi-07' only"),
        422: error("Malformed report", "payload is not an EdgeStatus: ..."),
    },
)
def create_signed_status(
    device_id: DeviceId,
    report: RelayedStatus,
    relay: RelayDep,
    settings: SettingsDep,
    who: PrincipalDep,
) -> StatusAccepted:
    """An enrolled edge's report as it writes it to Redis: the exact ``EdgeStatus`` bytes
    it signed and its signature, written unchanged to the status stream, the device key and
    ``device-sig:<id>`` (both expire after ``device_status_ttl_s``) and the device index.
    The rollout gates count it only if the signature verifies with the enrolled key."""
    check_device(who, device_id)
    if report.device != device_id:
        check_device(who, report.device)
        raise InputError(f"the report is signed as device {report.device!r}, not {device_id!r}")
    relay.write_signed_status(report, settings.device_status_ttl_s, settings.status_stream_maxlen)
    return StatusAccepted(device_id=device_id, ttl_s=settings.device_status_ttl_s)
