"""The status reporter: what this edge tells the fleet about itself.

Every ``interval_s`` (and at once after a swap) the daemon's ``EdgeStatus`` is
written as ``shared.status_report.add_status`` writes a report (the status
stream, the device's health key with a TTL, the fleet's device index).

A Redis error is logged once per outage and the next tick tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge.connections import REDIS_ERRORS, FleetMember, describe
from shared.messages import EdgeStatus
from shared.status_report import add_status

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportPolicy:
    """How often and how long a report counts (EdgeSettings ``status_*``)."""

    interval_s: float = 2.0
    ttl_s: int = 10
    stream_maxlen: int = 10_000


class StatusReporter:
    """Publishes ``build()`` on a timer and on ``kick()``."""

    def __init__(
        self,
        member: FleetMember,
        build: Callable[[], EdgeStatus],
        policy: ReportPolicy | None = None,
    ) -> None:
        policy = policy or ReportPolicy()
        self._redis = member.connect()
        self._keys = member.keys
        self._signer = member.signer
        self._build = build
        self._interval, self._ttl, self._maxlen = (
            policy.interval_s,
            policy.ttl_s,
            policy.stream_maxlen,
        )
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
        try:
            pipe = self._redis.pipeline(transaction=False)
            add_status(pipe, self._keys, status, self._ttl, self._maxlen, self._signer)
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
