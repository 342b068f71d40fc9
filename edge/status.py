"""The status reporter: what this edge tells the fleet about itself.

Every ``interval_s`` (and at once after a swap) the daemon's ``EdgeStatus`` is
written three ways in one pipeline:

- XADD to the fleet's status stream (capped with MAXLEN ~: old reports may go),
- SET the device key with a TTL: the health key that ``edgeloop-edge --check``
  and the dashboard read; it vanishes when the edge goes quiet,
- ZADD the device into the fleet's device index by last-seen time.

A Redis error is logged once per outage and the next tick tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edge.connections import REDIS_ERRORS, connect, describe
from shared.keys import FleetKeys
from shared.messages import EdgeStatus

logger = logging.getLogger(__name__)


class StatusReporter:
    """Publishes ``build()`` on a timer and on ``kick()``."""

    def __init__(
        self,
        *,
        redis_url: str,
        keys: FleetKeys,
        device_id: str,
        build: Callable[[], EdgeStatus],
        interval_s: float = 2.0,
        ttl_s: int = 10,
        stream_maxlen: int = 10_000,
    ) -> None:
        self._redis = connect(redis_url)
        self._keys, self._device_id = keys, device_id
        self._device_key = keys.device(device_id)
        self._build = build
        self._interval, self._ttl, self._maxlen = interval_s, ttl_s, stream_maxlen
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgeloop-status", daemon=True)
        self._failing = False
        self.reports = 0
        self.last_error: str | None = None
        self.last_error_at = 0.0

    def start(self) -> None:
        self._thread.start()

    def kick(self) -> None:
        """Report now (after a swap), not at the next tick."""
        self._kick.set()

    def stop(self, final: EdgeStatus | None = None, timeout: float = 5.0) -> None:
        """Stop the timer; publish ``final`` (say, state 'stopping') if given."""
        self._stop.set()
        self._kick.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if final is not None:
            self.publish(final)
        self._redis.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.publish(self._build())
            except Exception as e:  # a bad report must not end the reporting
                logger.exception("status: cannot build the report")
                self.last_error, self.last_error_at = f"status: {e}", time.time()
            self._kick.wait(self._interval)
            self._kick.clear()

    def publish(self, status: EdgeStatus) -> bool:
        """Write one report; False (logged) when Redis is unreachable."""
        data = status.to_wire()
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.xadd(self._keys.status, {"data": data}, maxlen=self._maxlen, approximate=True)
            pipe.set(self._device_key, data, ex=self._ttl)
            pipe.zadd(self._keys.devices, {self._device_id: status.ts})
            pipe.execute()
        except REDIS_ERRORS as e:
            self.last_error, self.last_error_at = f"status: {describe(e)}", time.time()
            if not self._failing:
                logger.warning(
                    "status: cannot report to Redis (%s); retrying every %.1fs",
                    describe(e),
                    self._interval,
                )
            self._failing = True
            return False
        if self._failing:
            logger.info("status: reporting again")
        self._failing = False
        self.reports += 1
        return True


def read_health(client: Any, keys: FleetKeys, device_id: str) -> EdgeStatus | None:
    """The device's last report from its health key (a ``redis.Redis``), or None
    if it has expired. Raises MessageError if it does not parse."""
    raw = client.get(keys.device(device_id))
    return EdgeStatus.from_wire(raw) if raw is not None else None
