"""The rollout controller's loop: a thread of the API process, or a process alone.

``ControllerLoop`` calls ``RolloutController.step()`` every ``interval_s``
until stopped, then brings the fleet's counts up to date (``FleetCounts.catch_up``) and,
every ``VersionCollector.interval_s``, collects old versions' payloads. The API starts one in its lifespan (``controller_interval_s``,
0 for none) and stops it on shutdown; ``edgeloop controller --config api.toml``
(``cloud/cli/controller.py``) runs one alone. Several at once (API replicas, a standalone controller beside
them) are safe: every change of a rollout is a WATCH/MULTI transaction on its
key that redis-py retries when another process changed it first, and a step
re-reads the state, so two controllers never apply one decision twice.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from cloud.registry.collect import VersionCollector
from cloud.registry.fleet_counts import FleetCounts
from cloud.registry.tuf_repo import TufRepository
from cloud.rollout.controller import RolloutController
from shared.replies import REDIS_DOWN

logger = logging.getLogger(__name__)


class ControllerLoop:
    """Step the controller on an interval in a daemon thread; ``stop`` returns when it ended."""

    def __init__(
        self,
        controller: RolloutController,
        interval_s: float,
        *,
        tuf: TufRepository | None = None,
        tuf_refresh_s: float = 600.0,
        renew_check_s: float = 30.0,
        counts: FleetCounts | None = None,
        collector: VersionCollector | None = None,
    ) -> None:
        self.controller = controller
        # The fleet's counts: each step folds in the reports edges wrote to Redis
        # themselves and counts expired devices offline (cloud/registry/fleet_counts.py).
        self.counts = counts or FleetCounts(controller.client, controller.keys)
        self.interval_s = interval_s
        # Old versions' payloads leave Redis (cloud/registry/collect.py); None: not here.
        self.collector = collector
        # The fleet's TUF snapshot and timestamp are re-signed here: this loop is the
        # cloud's one scheduled, long-running duty (cloud/registry/tuf_repo.py).
        self.tuf, self.tuf_refresh_s = tuf, tuf_refresh_s
        self._tuf_due = 0.0
        # Director orders are checked for renewal (and replays) this often, not every
        # step: it verifies every stored order.
        self.renew_check_s = renew_check_s
        self._renew_due = 0.0
        self.steps = 0
        self.errors = 0
        self.last_step_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="edgeloop-controller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def run(self) -> None:
        logger.info("rollout controller: stepping every %.1fs", self.interval_s)
        failing = False
        while not self._stop.is_set():
            try:
                self._refresh_tuf()
                self.controller.step()
                self._renew_orders()
                self._count()
                self._collect()
                self.steps += 1
                self.last_step_at = time.time()
                if failing:
                    logger.info("rollout controller: Redis reachable again")
                failing = False
            except (redis.RedisError, *REDIS_DOWN) as e:
                self.errors += 1
                if not failing:
                    logger.warning(
                        "rollout controller: %s; retrying every %.1fs", e, self.interval_s
                    )
                failing = True
            except Exception:  # one bad rollout must not stop the others' progress
                self.errors += 1
                logger.exception("rollout controller: step failed")
            self._stop.wait(self.interval_s)

    def _count(self) -> None:
        """Fold the fleet's new reports into its counts; a refusal (a Redis user without
        scripting, say) is logged, and never holds up the rollouts."""
        try:
            # reads trust the counts until two steps are missed
            self.counts.catch_up(fresh_s=2 * self.interval_s + 1.0)
        except redis.ResponseError as e:
            logger.warning("fleet counts not updated: %s", e)

    def _collect(self) -> None:
        """Collect old versions' payloads and forget old finished rollouts when due; a
        refusal is logged, like the counts'."""
        if self.collector is None or not self.collector.due():
            return
        try:
            self.collector.collect()
            self.controller.forget_finished(self.collector.keep_rollouts)
        except redis.ResponseError as e:
            logger.warning("old versions not collected: %s", e)

    def _renew_orders(self) -> None:
        if time.monotonic() < self._renew_due:
            return
        self.controller.renew_orders()
        self._renew_due = time.monotonic() + self.renew_check_s

    def _refresh_tuf(self) -> None:
        if self.tuf is None or time.monotonic() < self._tuf_due:
            return
        version = self.tuf.refresh()
        self._tuf_due = time.monotonic() + self.tuf_refresh_s
        logger.info("TUF timestamp re-signed (version %d)", version)
