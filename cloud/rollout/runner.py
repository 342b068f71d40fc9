"""Where the rollout controller runs: a thread of the API process, or alone.

``ControllerLoop`` calls ``RolloutController.step()`` every ``interval_s``
until stopped. The API starts one in its lifespan (``controller_interval_s``,
0 for none) and stops it on shutdown; ``edgeloop controller --config api.toml``
runs one alone. Several at once (API replicas, a standalone controller beside
them) are safe: every change of a rollout is a WATCH/MULTI transaction on its
key that redis-py retries when another process changed it first, and a step
re-reads the state, so two controllers never apply one decision twice.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import redis

from cloud.rollout.controller import RolloutController

logger = logging.getLogger(__name__)


class ControllerLoop:
    """Step the controller on an interval in a daemon thread; ``stop`` returns when it ended."""

    def __init__(self, controller: RolloutController, interval_s: float) -> None:
        self.controller = controller
        self.interval_s = interval_s
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
                self.controller.step()
                self.steps += 1
                self.last_step_at = time.time()
                if failing:
                    logger.info("rollout controller: Redis reachable again")
                failing = False
            except redis.RedisError as e:
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


# -- edgeloop controller ---------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="the API's TOML settings (EDGELOOP_API_* win)")
    p.add_argument("--interval", type=float, help="seconds between steps (default: the settings')")
    p.add_argument("--once", action="store_true", help="step every rollout once and exit")


def run(args: argparse.Namespace) -> int:
    from cloud.api.settings import ApiSettings
    from cloud.registry import DirBlobStore, Registry
    from shared.config import load_settings
    from shared.keys import FleetKeys

    settings = load_settings(ApiSettings, args.config)
    assert settings.blob_dir is not None
    client = redis.Redis.from_url(settings.redis_url)
    keys = FleetKeys(settings.fleet)
    controller = RolloutController(
        client, keys, Registry(client, keys, DirBlobStore(settings.blob_dir))
    )
    if args.once:
        controller.step()
        return 0
    interval = args.interval or settings.controller_interval_s or 5.0
    loop = ControllerLoop(controller, interval)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        loop._stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    logger.info("rollout controller for fleet %r", settings.fleet)
    loop.run()
    client.close()
    return 0
