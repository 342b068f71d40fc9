"""``edgeloop demo``: arguments and entry point.

    edgeloop demo [--quick] [--json]                       # the digits and their CNN
    edgeloop demo --model my_model.py:build --dataset npz:windows.npz [--task regression]
    edgeloop demo --example vibration|regression|images

Bad input (a model or dataset spec that does not fit) is one line on stderr and
exit 2, before anything is started (``cloud.demo.workload``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from rich.console import Console

from cloud.demo.runner import DemoOptions, run_demo
from cloud.demo.workload import EXAMPLES
from shared.errors import InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a shorter run (a few minutes on 2 cores)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the run's figures as one JSON object on the last line",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help='"digits" (default), "csv:PATH", "npz:PATH" (arrays X [N, *input_shape] and y; '
        'optional labels, outputs, X_drift, y_drift) or "py:module:function"',
    )
    p.add_argument(
        "--model",
        default=None,
        help="a zoo model (digits, mlp, regression_mlp, dwcnn, cnn1d) or an import spec "
        "'path/to/file.py:build' or 'module:build' (build(info) -> torch.nn.Module); "
        "default: the dataset's zoo model",
    )
    p.add_argument(
        "--task",
        choices=["classification", "regression"],
        default=None,
        help="the task, when the dataset's y does not say it (integers or strings are "
        "classes, floats are regression targets)",
    )
    p.add_argument(
        "--example",
        choices=EXAMPLES,
        default=None,
        help="a shipped example with its own data generator and model (examples/NAME/)",
    )
    p.add_argument(
        "--label",
        dest="label_column",
        default=None,
        help="the CSV's label column (default: the last column)",
    )
    p.add_argument(
        "--scenario",
        choices=["drift", "bad-canary", "attacks", "chaos"],
        default="drift",
        help="drift: the continual-learning loop (default); bad-canary: a harmful version "
        "rolled out ring by ring is stopped at the canary ring; attacks: the update and "
        "device attacks of the threat model, each against the live fleet; chaos: the drift "
        "loop while a fault schedule drawn from --seed runs (Redis frozen and killed, "
        "processes killed, an edge cut off, its disk full, a clock stepped)",
    )
    p.add_argument(
        "--edges",
        type=int,
        default=None,
        help="edge daemons to start (default 3; 10 for bad-canary)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep logs and state in the temp dir (a run that fails or misses a done "
        "criterion keeps them anyway)",
    )
    p.add_argument(
        "--redis-url",
        help="run the drift scenario on this Redis (redis://, rediss://, redis+cluster://, "
        "redis+sentinel://...) instead of a private redis-server; its fleet 'demo' must be "
        "empty",
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def check_arguments(args: argparse.Namespace) -> None:
    """Combinations that cannot work (``InputError``: exit 2)."""
    if args.example and (args.model or args.dataset or args.task or args.label_column):
        raise InputError(
            f"--example {args.example} brings its own model and data: "
            "leave out --model, --dataset, --task and --label"
        )
    if args.scenario == "bad-canary" and (args.model or args.example or args.task):
        raise InputError(
            "the bad-canary scenario runs on the digits or a CSV (--dataset); "
            "--model, --example and --task are for the drift scenario"
        )
    if args.scenario == "attacks" and (
        args.model or args.example or args.task or args.dataset or args.label_column
    ):
        raise InputError(
            "the attacks scenario runs on the digits; --model, --example, --task, "
            "--dataset and --label are for the drift scenario"
        )
    if args.scenario == "chaos" and (
        args.model or args.example or args.task or args.dataset or args.label_column
    ):
        raise InputError(
            "the chaos scenario runs on the digits; --model, --example, --task, --dataset "
            "and --label are for the drift scenario"
        )
    if args.scenario == "chaos" and args.edges is not None and args.edges < 3:
        raise InputError(
            "the chaos scenario needs at least 3 edges (one cut off, one on a stepped clock)"
        )
    if args.redis_url and args.scenario != "drift":
        raise InputError(
            f"--redis-url is for the drift scenario; the {args.scenario} scenario starts (and "
            "in some scenarios stops or kills) a redis-server of its own"
        )
    if args.scenario == "attacks" and args.edges is not None and args.edges < 2:
        raise InputError("the attacks scenario needs at least 2 edges")


def run(args: argparse.Namespace) -> int:
    # SIGTERM stops the demo the way Ctrl-C does: everything it started is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    console = Console(stderr=args.json)
    bad_canary = args.scenario == "bad-canary"
    check_arguments(args)
    options = DemoOptions(
        quick=args.quick,
        dataset=args.dataset or "digits",
        label_column=args.label_column,
        model=args.model,
        example=args.example,
        task=args.task,
        edges=args.edges or (10 if bad_canary else 3),
        seed=args.seed,
        keep=args.keep,
        redis_url=args.redis_url,
    )
    if bad_canary:
        from cloud.demo.bad_canary import BadCanaryDemo, run_bad_canary

        if options.edges < 10:
            raise InputError("the bad-canary scenario needs at least 10 edges")
        result = run_bad_canary(BadCanaryDemo(options, console))
    elif args.scenario == "attacks":
        from cloud.demo.attacks_scenario import AttacksDemo, run_attacks

        result = run_attacks(AttacksDemo(options, console))
    elif args.scenario == "chaos":
        from cloud.demo.chaos.scenario import ChaosDemo, run_chaos

        result = run_chaos(ChaosDemo(options, console))
    else:
        result = run_demo(options, console)
    if args.json:
        print(json.dumps(result), file=sys.stdout, flush=True)
    return 0
