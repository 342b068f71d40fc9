"""``edgeloop demo``: arguments and entry point."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from rich.console import Console

from cloud.demo.runner import DemoOptions, run_demo
from shared.errors import InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quick", action="store_true", help="a shorter run (under 3 minutes on 2 cores)"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the run's figures as one JSON object on the last line",
    )
    p.add_argument("--dataset", default="digits", help='"digits" (default) or "csv:PATH"')
    p.add_argument(
        "--label",
        dest="label_column",
        default=None,
        help="the CSV's label column (default: the last column)",
    )
    p.add_argument(
        "--scenario",
        choices=["drift", "bad-canary"],
        default="drift",
        help="drift: the continual-learning loop (default); bad-canary: a harmful version "
        "rolled out ring by ring is stopped at the canary ring",
    )
    p.add_argument(
        "--edges",
        type=int,
        default=None,
        help="edge daemons to start (default 3; 10 for bad-canary)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep logs and state in the temp dir")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    # SIGTERM stops the demo the way Ctrl-C does: everything it started is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    console = Console(stderr=args.json)
    bad_canary = args.scenario == "bad-canary"
    options = DemoOptions(
        quick=args.quick,
        dataset=args.dataset,
        label_column=args.label_column,
        edges=args.edges or (10 if bad_canary else 3),
        seed=args.seed,
        keep=args.keep,
    )
    if bad_canary:
        from cloud.demo.bad_canary import BadCanaryDemo, run_bad_canary

        if options.edges < 10:
            raise InputError("the bad-canary scenario needs at least 10 edges")
        result = run_bad_canary(BadCanaryDemo(options, console))
    else:
        result = run_demo(options, console)
    if args.json:
        print(json.dumps(result), file=sys.stdout, flush=True)
    return 0
