"""``edgeloop controller``: the rollout controller in a process of its own.

It reads the API's settings (the same fleet, Redis and blob directory) and steps
every rollout every ``--interval`` seconds (default: the settings'
``controller_interval_s``), or once with ``--once``. ``--recount`` rebuilds the
fleet's counts from every device's status (cloud/registry/fleet_counts.py): after
an upgrade from a version without them, or to repair them. Beside API processes that
run their own controller it is safe: see ``cloud/rollout/loop.py``.
"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path
from types import FrameType

import redis

from cloud.registry.collect import VersionCollector
from cloud.registry.fleet_counts import FleetCounts
from cloud.rollout.controller import RolloutController
from cloud.rollout.loop import ControllerLoop
from shared.keys import FleetKeys

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="the API's TOML settings (EDGELOOP_API_* win)")
    p.add_argument("--interval", type=float, help="seconds between steps (default: the settings')")
    p.add_argument("--once", action="store_true", help="step every rollout once and exit")
    p.add_argument(
        "--recount",
        action="store_true",
        help="rebuild the fleet's counts from every device's status (upgrades, repair) and exit",
    )


def run(args: argparse.Namespace) -> int:
    from cloud.api.settings import ApiSettings
    from cloud.registry.tuf_repo import tuf_repository
    from cloud.registry.versions import DirBlobStore, Registry
    from cloud.rollout.director import director_of
    from shared.config import load_settings

    settings = load_settings(ApiSettings, args.config)
    assert settings.blob_dir is not None
    client = settings.redis_client()
    keys = FleetKeys(settings.fleet)
    if args.recount:
        return _recount(client, keys)
    registry = Registry(client, keys, DirBlobStore(settings.blob_dir))
    controller = RolloutController(
        client,
        keys,
        registry,
        director=director_of(
            client,
            keys,
            settings.director_key,
            settings.director_ttl_s,
            settings.director_state,
        ),
    )
    if args.once:
        controller.step()
        controller.renew_orders()
        FleetCounts(client, keys).catch_up()
        return 0
    interval = args.interval or settings.controller_interval_s or 5.0
    tuf = tuf_repository(client, keys, None, settings.tuf_online_key)
    collector = VersionCollector.configured(registry, settings)
    loop = ControllerLoop(
        controller, interval, tuf=tuf, tuf_refresh_s=settings.tuf_refresh_s, collector=collector
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        loop.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    logger.info("rollout controller for fleet %r", settings.fleet)
    loop.run()
    client.close()
    return 0


def _recount(client: redis.Redis, keys: FleetKeys) -> int:
    from rich.progress import Progress, SpinnerColumn, TextColumn

    counts = FleetCounts(client, keys)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), transient=True) as bar:
        task = bar.add_task("counting devices", total=None)
        total = counts.recount(lambda n: bar.update(task, description=f"{n} devices counted"))
    f = counts.read()
    print(f"fleet {keys.fleet}: {total} devices counted; {f.by_health()}")
    return 0
