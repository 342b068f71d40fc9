"""Redis connections for the edge's threads.

Each long-running thread (uplink, updater, status) gets its own client: an XREAD
BLOCK holds a connection, and one thread's outage handling must not stall
another's. redis-py's own retry loop is switched off (one immediate retry, for
a pooled connection that went stale across a server restart): the threads
have their own backoff (``shared.retry.Backoff``) and must notice an outage
within seconds, not after redis-py's default ten retries.

A ``FleetMember`` says where those threads connect (with the TLS options of
``shared.transport``) and who this device is there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.device_identity import DeviceSigner
from shared.keys import FleetKeys
from shared.redis_client import connect_redis
from shared.transport import redact

__all__ = ["REDIS_ERRORS", "FleetMember", "connect", "describe", "redact"]

logger = logging.getLogger(__name__)

#: What a Redis call may raise when the server is down, restarting, out of memory
#: or otherwise unable to answer; worth retrying later.
#: (A cluster that cannot be reached at all raises RedisClusterException, no RedisError.)
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.RedisError,
    OSError,
    redis.exceptions.RedisClusterException,
)


def connect(
    url: str,
    *,
    socket_timeout: float = 5.0,
    connect_timeout: float = 2.0,
    tls: Mapping[str, Any] | None = None,
    retries: int = 1,
) -> redis.Redis:
    """A client for ``url`` (one server or a Redis Cluster, ``shared/redis_client.py``)
    that fails fast when Redis is down.

    ``socket_timeout`` must exceed any XREAD BLOCK time the caller uses. ``tls``:
    redis-py's ``ssl_*`` options for a ``rediss://`` URL
    (``shared.transport.RedisSettings.redis_options``). Nothing is sent until the
    first command, so this never blocks. ``retries``: immediate retries of a command
    whose connection broke (0 for a download that a deadline may cut off).
    """
    return connect_redis(
        url,
        **(tls or {}),
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), retries),
        health_check_interval=30,
        protocol=2,
    )


@dataclass(frozen=True)
class FleetMember:
    """This device in its fleet: the fleet's Redis and key names, the device's id
    and the model it serves. The uplink, the updater and the status reporter each
    connect with it on their own."""

    redis_url: str
    keys: FleetKeys
    device_id: str
    model: str
    tls: Mapping[str, Any] = field(default_factory=dict)
    #: Signs feedback entries and status reports (an enrolled device; None: unsigned).
    signer: DeviceSigner | None = None

    def connect(self, *, socket_timeout: float = 5.0, retries: int = 1) -> redis.Redis:
        """A new client for the fleet's Redis; see ``connect``."""
        return connect(self.redis_url, socket_timeout=socket_timeout, tls=self.tls, retries=retries)


def describe(e: BaseException) -> str:
    r"""A one-line description of a Redis error for logs and ``last_error``.

    >>> describe(redis.ConnectionError("Error 111 connecting to cache:6379.\nrefused"))
    'ConnectionError: Error 111 connecting to cache:6379.'
    """
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
