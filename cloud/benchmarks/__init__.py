"""``edgeloop bench NAME``: benchmarks that run the cloud's own code end to end.

Each benchmark is a module with ``add_arguments(parser)`` and ``run(args) -> int``,
listed in ``BENCHMARKS``; nothing heavy is imported until one runs.
"""

from __future__ import annotations

import argparse
import importlib

#: name -> (help, module)
BENCHMARKS = {
    "deltas": (
        "bytes shipped per update, budgeted vs full re-export: the digits trainer, every zoo family",
        "cloud.benchmarks.deltas",
    ),
    "verify": (
        "an update's apply time with TUF and director verification vs reading and swapping only",
        "cloud.benchmarks.verify",
    ),
    "ssp": (
        "data-parallel training with a straggler: time to a target accuracy and the final "
        "accuracy for staleness s in 0, 1, 4, inf, against one worker",
        "cloud.benchmarks.ssp",
    ),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (help_text, module) in BENCHMARKS.items():
        bp = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(bp)


def run(args: argparse.Namespace) -> int:
    _, module = BENCHMARKS[args.benchmark]
    return int(importlib.import_module(module).run(args))
