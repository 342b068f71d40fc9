"""The status reporter: what this edge tells the fleet about itself.

Every ``interval_s`` (and at once after a swap) the daemon's ``EdgeStatus`` is
written as ``shared.status_report.add_status`` writes a report (the status
stream, the device's health key with a TTL, the fleet's device index).

A Redis error is logged once per outage and the next tick tries again.

An edge with ``uplink = "http"`` sends the same report, signed the same way, through the
cloud API instead (``edge.http_uplink.post_status``); an unreachable API is an outage as
Redis's is, and a report the API refuses (4xx) is logged and counted in ``refused``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge.connections import REDIS_ERRORS, FleetMember, describe
from edge.fleet_api import ApiUnreachable, FleetApi
from edge.http_uplink import StatusRefused, post_status
from shared.messages import EdgeStatus
from shared.status_report import add_status

logger = logging.getLogger(__name__)

#: What a report's write may raise when Redis or the API cannot take it now.
_UNREACHABLE: tuple[type[BaseException], ...] = (*REDIS_ERRORS, ApiUnreachable)


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
        api: FleetApi | None = None,
    ) -> None:
        policy = policy or ReportPolicy()
        # Set (``uplink = "http"``): reports go through the API, Redis is never touched.
        self._api = api
        self._redis = member.connect() if api is None else None
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
        self.refused = 0  # reports the API refused
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
        if self._redis is not None:
            self._redis.close()
        if self._api is not None:
            self._api.close()

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
        """Write one report; False (logged) when Redis or the API is unreachable or the
        API refuses it."""
        try:
            if self._api is not None:
                post_status(self._api, status, self._signer)
            else:
                assert self._redis is not None
                pipe = self._redis.pipeline(transaction=False)
                add_status(pipe, self._keys, status, self._ttl, self._maxlen, self._signer)
                pipe.execute()
        except StatusRefused as e:
            self.refused += 1
            self.last_error, self.last_error_at = f"status: {e}", time.time()
            logger.error("status: the API refused the report: %s", e)
            return False
        except _UNREACHABLE as e:
            what = str(e) if isinstance(e, ApiUnreachable) else describe(e)
            self.last_error, self.last_error_at = f"status: {what}", time.time()
            if not self._failing:
                logger.warning(
                    "status: cannot report to %s (%s); retrying every %.1fs",
                    "the API" if self._api is not None else "Redis",
                    what,
                    self._interval,
                )
            self._failing = True
            return False
        if self._failing:
            logger.info("status: reporting again")
        self._failing = False
        self.reports += 1
        return True
