"""``edgeloop trainer`` and ``edgeloop baseline``: the trainer process and the bundled baseline.

``edgeloop trainer --config trainer.toml`` runs one continual trainer until
SIGTERM/SIGINT (it finishes the current round first; a second signal stops at
once); ``--check`` exits 0 when that model's trainer reported recently, for a
supervisor's health check. ``edgeloop baseline`` trains and exports the digits
model the edge package ships as its last fallback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud.trainer.settings import TrainerSettings

logger = logging.getLogger(__name__)


def trainer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML settings (EDGELOOP_TRAINER_* variables win)")
    p.add_argument(
        "--check", action="store_true", help="exit 0 if this model's trainer reported recently"
    )


def trainer(args: argparse.Namespace) -> int:
    from cloud.registry.locations import DEV_KEY_DIR
    from cloud.trainer.settings import TrainerSettings
    from shared.config import load_settings
    from shared.signing import write_keypair

    settings = load_settings(TrainerSettings, args.config)
    if args.check:
        return _check_trainer(settings)
    if settings.dev_key_missing():
        logger.warning("development mode: making a signing key pair in %s", DEV_KEY_DIR)
        write_keypair(DEV_KEY_DIR)

    from cloud.trainer.loop import Trainer

    trainer = Trainer(settings)
    stop = threading.Event()
    interrupted: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        interrupted.append(signum)
        logger.info("stopping (signal %d); finishing the current round", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    trainer.run(stop)
    return 130 if signal.SIGINT in interrupted else 0


def _check_trainer(settings: TrainerSettings) -> int:
    import redis

    from shared.keys import FleetKeys
    from shared.messages import TrainerStatus
    from shared.transport import scrub

    try:
        raw = settings.redis_client().get(FleetKeys(settings.fleet).trainer(settings.model_name))
    except redis.RedisError as e:
        print(f"unhealthy: redis: {scrub(str(e), settings.redis_url)}", file=sys.stderr)
        return 1
    if raw is None:
        print("unhealthy: no trainer status yet", file=sys.stderr)
        return 1
    age = time.time() - TrainerStatus.from_wire(raw).ts
    if age > 3 * settings.status_interval_s + 5:
        print(f"unhealthy: last status {age:.0f}s ago", file=sys.stderr)
        return 1
    print(f"healthy: last status {age:.0f}s ago")
    return 0


def baseline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        type=Path,
        default=Path("edge/baseline"),
        help="directory to write digits.tflite/.json",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30)


def baseline(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cloud.trainer.baseline import make_baseline

    with Console(stderr=True).status("training and exporting the digits baseline"):
        tflite_path, meta = make_baseline(args.out, seed=args.seed, epochs=args.epochs)
    print(f"wrote {tflite_path} ({meta['sha256'][:12]}, agreement {meta['int8_agreement']:.3f})")
    return 0
