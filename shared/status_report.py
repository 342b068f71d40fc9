"""A device's status report in Redis: the one writer, used by the edge's reporter
and by the API for edges that report over HTTP, and the reader of its health key.

A report is written three ways in one pipeline (no transaction: each write
stands on its own, and the next report repairs a partial one):

- XADD to the fleet's status stream, capped with MAXLEN ~ (old reports may go);
- SET the device key with a TTL: the health key that ``edgeloop-edge --check``,
  the rollout gates and the API read; it vanishes when the edge goes quiet;
- ZADD the device into the fleet's device index by last-seen time.
"""

from __future__ import annotations

from typing import Any

from shared.keys import FleetKeys
from shared.messages import EdgeStatus

#: The field of a status stream entry that holds the ``EdgeStatus`` JSON.
STATUS_FIELD = "data"


def add_status(pipe: Any, keys: FleetKeys, status: EdgeStatus, ttl_s: int, maxlen: int) -> None:
    """Queue the three writes of one report on ``pipe`` (a redis-py pipeline); the
    caller executes it."""
    data = status.to_wire()
    pipe.xadd(keys.status, {STATUS_FIELD: data}, maxlen=maxlen, approximate=True)
    pipe.set(keys.device(status.device_id), data, ex=ttl_s)
    pipe.zadd(keys.devices, {status.device_id: status.ts})


def read_health(client: Any, keys: FleetKeys, device_id: str) -> EdgeStatus | None:
    """The device's last report from its health key (a ``redis.Redis``), or None
    if it has expired. Raises MessageError if it does not parse."""
    raw = client.get(keys.device(device_id))
    return EdgeStatus.from_wire(raw) if raw is not None else None
