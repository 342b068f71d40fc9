"""A device's status report in Redis: the one writer, used by the edge's reporter
and by the API for edges that report over HTTP, and the reader of its health key.

A report is written three ways in one pipeline (no transaction: each write
stands on its own, and the next report repairs a partial one):

- XADD to the fleet's status stream, capped with MAXLEN ~ (old reports may go);
- SET the device key with a TTL: the health key that ``edgeloop-edge --check``,
  the rollout gates and the API read; it vanishes when the edge goes quiet;
- ZADD the device into the fleet's device index by last-seen time.

An enrolled device signs the report (``shared.device_identity``): the signature goes
into the stream entry and, with the same TTL, into ``FleetKeys.device_sig``; the
rollout gates read the health key only with a signature that verifies.
"""

from __future__ import annotations

from typing import Any

from shared.device_identity import (
    DEVICE_FIELD,
    SIG_FIELD,
    STATUS,
    DeviceKeyring,
    DeviceSigner,
)
from shared.keys import FleetKeys
from shared.messages import EdgeStatus

#: The field of a status stream entry that holds the ``EdgeStatus`` JSON.
STATUS_FIELD = "data"


def add_status(
    pipe: Any,
    keys: FleetKeys,
    status: EdgeStatus,
    ttl_s: int,
    maxlen: int,
    signer: DeviceSigner | None = None,
) -> None:
    """Queue the writes of one report on ``pipe`` (a redis-py pipeline), signed by
    ``signer`` if given; the caller executes it."""
    data = status.to_wire()
    sig = signer.sign(STATUS, data) if signer is not None else None
    add_report(pipe, keys, status, data, sig, ttl_s, maxlen)


def add_report(
    pipe: Any,
    keys: FleetKeys,
    status: EdgeStatus,
    data: bytes,
    sig: bytes | None,
    ttl_s: int,
    maxlen: int,
) -> None:
    """Queue the writes of the report ``data`` (``status``'s exact wire bytes, as signed)
    with ``status.device_id``'s signature ``sig`` (None: unsigned). The API relays an HTTP
    edge's signed report through this unchanged: it never re-signs."""
    fields: dict[str, Any] = {STATUS_FIELD: data}
    if sig is not None:
        fields.update({DEVICE_FIELD: status.device_id.encode(), SIG_FIELD: sig})
    pipe.xadd(keys.status, fields, maxlen=maxlen, approximate=True)
    pipe.set(keys.device(status.device_id), data, ex=ttl_s)
    if sig is not None:
        pipe.set(keys.device_sig(status.device_id), sig, ex=ttl_s)
    pipe.zadd(keys.devices, {status.device_id: status.ts})


def read_health(client: Any, keys: FleetKeys, device_id: str) -> EdgeStatus | None:
    """The device's last report from its health key (a ``redis.Redis``), or None
    if it has expired. Raises MessageError if it does not parse."""
    raw = client.get(keys.device(device_id))
    return EdgeStatus.from_wire(raw) if raw is not None else None


def verified_statuses(
    client: Any, keys: FleetKeys, devices: list[str], keyring: DeviceKeyring
) -> tuple[dict[str, bytes | None], dict[str, str]]:
    """The devices' health keys (None: expired) and, for those refused, why: once the
    fleet has enrolled devices, a report counts only with its device's signature."""
    if not devices:
        return {}, {}
    raws = client.mget([keys.device(d) for d in devices])
    if not keyring.enforcing:
        return dict(zip(devices, raws, strict=True)), {}
    sigs = client.mget([keys.device_sig(d) for d in devices])
    out: dict[str, bytes | None] = {}
    refused: dict[str, str] = {}
    for device, raw, sig in zip(devices, raws, sigs, strict=True):
        why = keyring.check(STATUS, device, raw, sig) if raw is not None else None
        if why is not None:
            refused[device] = why
            raw = None
        out[device] = raw
    return out, refused
