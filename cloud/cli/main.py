"""``edgeloop``: the cloud side's command line.

Subcommands are registered in ``COMMANDS``, one line each: the module that
implements the command, imported only when the command runs (``edgeloop keygen``
never imports torch), and the prefix of its two functions, ``<verb>_args(parser)``
and ``<verb>(args) -> int`` (without one, ``add_arguments`` and ``run``). To add one:

    COMMANDS["demo"] = Command.of("the whole loop on this machine", "cloud.demo.cli")

``run(args) -> int`` returns the exit code. User errors (``EdgeloopError``)
print one line to stderr and exit 2; an unreachable Redis (a ``RedisError`` no
command turned into one) prints one line and exits 2, never the URL's password;
Ctrl-C exits 130 without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

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

    @classmethod
    def of(cls, help: str, module: str, verb: str | None = None) -> Command:
        """The command whose functions are ``module:<verb>_args`` and ``module:<verb>``
        (``add_arguments`` and ``run`` without a verb)."""
        if verb is None:
            return cls(help, f"{module}:add_arguments", f"{module}:run")
        return cls(help, f"{module}:{verb}_args", f"{module}:{verb}")


def _resolve(target: Target) -> Callable[..., Any]:
    if callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


COMMANDS: dict[str, Command] = {
    "trainer": Command.of("run a continual trainer", "cloud.cli.trainer", "trainer"),
    "keygen": Command.of("make an Ed25519 signing key pair", "cloud.cli.keys", "keygen"),
    "keys": Command.of(
        "the fleet's TUF keys: init, rotate, revoke, show", "cloud.cli.keys", "keys"
    ),
    "baseline": Command.of(
        "train and export the bundled digits baseline", "cloud.cli.trainer", "baseline"
    ),
    "demo": Command.of("the whole loop on this machine", "cloud.demo.cli"),
    "replay": Command.of(
        "a dataset's rows in order through the loop, against River's learners",
        "cloud.replay.cli",
    ),
    "api": Command.of("run the cloud REST API", "cloud.api.server"),
    "versions": Command.of("list a model's versions", "cloud.cli.versions", "versions"),
    "explain": Command.of("show why a version exists", "cloud.cli.versions", "explain"),
    "diff": Command.of("compare two versions", "cloud.cli.versions", "diff"),
    "rollout": Command.of("start, follow and steer rollouts", "cloud.cli.rollout", "rollout"),
    "fleet": Command.of("device counts by version and health", "cloud.cli.rollout", "fleet"),
    "devices": Command.of("every device's last report", "cloud.cli.rollout", "devices"),
    "quarantine": Command.of(
        "list quarantined devices, release one", "cloud.cli.quarantine", "quarantine"
    ),
    "token": Command.of("issue, list and revoke API tokens", "cloud.cli.tokens", "token"),
    "device": Command.of("enroll, revoke and list devices", "cloud.cli.devices", "device"),
    "acl": Command.of("generate the Redis ACL file for fleets", "cloud.cli.devices", "acl"),
    "controller": Command.of("run the rollout controller alone", "cloud.cli.controller"),
    "bench": Command.of("run a benchmark", "cloud.benchmarks"),
    "simulate": Command.of(
        "a simulated fleet of N devices against the real cloud, measured", "cloud.simulate.cli"
    ),
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
    except RedisError as e:
        # redis-py's messages name host and port, never the password
        print(f"edgeloop {args.command}: error: Redis: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
