"""``edgeloop``: the cloud side's command line.

Subcommands are registered in ``COMMANDS``, one line each, with their argument
setup and their run function named as ``"module:function"`` strings (or given
as callables) so that nothing heavy is imported until that command runs:
``edgeloop keygen`` never imports torch. To add one:

    COMMANDS["demo"] = Command("the whole loop on this machine",
                               "cloud.demo.cli:add_arguments", "cloud.demo.cli:run")

``run(args) -> int`` returns the exit code. User errors (``EdgeloopError``)
print one line to stderr and exit 2; Ctrl-C exits 130 without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import EdgeloopError

logger = logging.getLogger(__name__)

Target = str | Callable[..., Any]

#: Third-party loggers that chatter at import or conversion time.
_NOISY = (
    "torchao",
    "absl",
    "jax",
    "tensorflow",
    "torch",
    "litert_torch",
    "ai_edge_quantizer",
    "h5py",
    "httpx",
)


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Target  # (parser) -> None
    run: Target  # (args) -> int


def _resolve(target: Target) -> Callable[..., Any]:
    if callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


# -- trainer -------------------------------------------------------------------


def trainer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML settings (EDGELOOP_TRAINER_* variables win)")
    p.add_argument(
        "--check", action="store_true", help="exit 0 if this model's trainer reported recently"
    )


def run_trainer(args: argparse.Namespace) -> int:
    from cloud.settings import DEV_KEY_DIR, TrainerSettings
    from shared.config import load_settings
    from shared.signing import write_keypair

    settings = load_settings(TrainerSettings, args.config)
    if args.check:
        return _check_trainer(settings)
    if settings.dev_key_missing():
        logger.warning("development mode: making a signing key pair in %s", DEV_KEY_DIR)
        write_keypair(DEV_KEY_DIR)

    from cloud.trainer import Trainer

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


def _check_trainer(settings: Any) -> int:
    import redis

    from shared.keys import FleetKeys
    from shared.messages import TrainerStatus

    try:
        raw = redis.Redis.from_url(settings.redis_url).get(
            FleetKeys(settings.fleet).trainer(settings.model)
        )
    except redis.RedisError as e:
        print(f"unhealthy: redis: {e}", file=sys.stderr)
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


# -- keygen --------------------------------------------------------------------


def keygen_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", type=Path, required=True, help="directory for signing.key and signing.pub"
    )


def run_keygen(args: argparse.Namespace) -> int:
    from shared.signing import write_keypair

    private, public = write_keypair(args.out)
    print(
        f"wrote {private} (keep it secret; the trainer's signing_key) and {public} (for the edges)"
    )
    return 0


# -- baseline ------------------------------------------------------------------


def baseline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        type=Path,
        default=Path("edge/baseline"),
        help="directory to write digits.tflite/.json",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30)


def run_baseline(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cloud.baseline import make_baseline

    with Console(stderr=True).status("training and exporting the digits baseline"):
        tflite_path, meta = make_baseline(args.out, seed=args.seed, epochs=args.epochs)
    print(f"wrote {tflite_path} ({meta['sha256'][:12]}, agreement {meta['int8_agreement']:.3f})")
    return 0


_API, _V, _R = "cloud.api.server:", "cloud.versions_cli:", "cloud.rollout_cli:"
_T, _C = "cloud.token_cli:", "cloud.rollout.runner:"

COMMANDS: dict[str, Command] = {
    "trainer": Command("run a continual trainer", trainer_arguments, run_trainer),
    "keygen": Command("make an Ed25519 signing key pair", keygen_arguments, run_keygen),
    "baseline": Command(
        "train and export the bundled digits baseline", baseline_arguments, run_baseline
    ),
    "demo": Command(
        "the whole loop on this machine", "cloud.demo.cli:add_arguments", "cloud.demo.cli:run"
    ),
    "api": Command("run the cloud REST API", _API + "add_arguments", _API + "run"),
    "versions": Command("list a model's versions", _V + "versions_args", _V + "versions"),
    "explain": Command("show why a version exists", _V + "explain_args", _V + "explain"),
    "diff": Command("compare two versions", _V + "diff_args", _V + "diff"),
    "rollout": Command("start, follow and steer rollouts", _R + "rollout_args", _R + "rollout"),
    "fleet": Command("device counts by version and health", _R + "fleet_args", _R + "fleet"),
    "devices": Command("every device's last report", _R + "devices_args", _R + "devices"),
    "token": Command("issue, list and revoke API tokens", _T + "token_args", _T + "token"),
    "controller": Command("run the rollout controller alone", _C + "add_arguments", _C + "run"),
    "bench": Command("run a benchmark", "cloud.benchmarks:add_arguments", "cloud.benchmarks:run"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeloop", description="edgeloop cloud: trainer and tools"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        _resolve(cmd.add_arguments)(p)
        p.set_defaults(_run=cmd.run)
    return parser


def _not_third_party_root(record: logging.LogRecord) -> bool:
    # The converter logs progress on the root logger ("Serializing model...").
    return not (
        record.name == "root"
        and "site-packages" in record.pathname
        and record.levelno < logging.WARNING
    )


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_third_party_root)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        return int(_resolve(args._run)(args))
    except EdgeloopError as e:
        print(f"edgeloop {args.command}: error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))
    except OSError as e:  # a path the user gave cannot be read or written
        print(f"edgeloop {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
