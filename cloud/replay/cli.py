"""``edgeloop replay``: arguments, the report table and the entry point.

    edgeloop replay --dataset csv:sensors.csv [--label COL] [--json] [--plot acc.png]
    edgeloop replay --dataset river:sea --label-share 0.5 --label-delay 20 --rate 0

Bad input (a dataset that does not parse, a missing label column, a label share
outside (0, 1], a delay longer than the stream) is one line on stderr and exit 2,
before anything is started (``cloud.replay.runner.prepare_stream``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cloud.replay.plan import ReplayOptions
from cloud.replay.streams import RIVER_STREAMS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        required=True,
        help=f'"csv:PATH", "npz:PATH", "py:module:function" or "river:NAME" '
        f"({', '.join(RIVER_STREAMS)}); rows are replayed in file order",
    )
    p.add_argument("--label", dest="label_column", default=None, help="the CSV's label column")
    p.add_argument("--edges", type=int, default=1, help="edge daemons, asked round-robin")
    p.add_argument(
        "--rate", type=float, default=50.0, help="rows a second in total (0: as fast as possible)"
    )
    p.add_argument("--label-share", type=float, default=1.0, help="share of rows labeled, (0, 1]")
    p.add_argument(
        "--label-delay", type=int, default=0, help="rows between a prediction and its label"
    )
    p.add_argument(
        "--seed-rows", type=int, default=None, help="first rows that bootstrap version 1"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="at most 2000 rows (tests)")
    p.add_argument("--json", action="store_true", help="the figures as JSON on the last line")
    p.add_argument("--plot", type=Path, default=None, help="a PNG of windowed accuracy")
    p.add_argument("--keep", action="store_true", help="keep logs and state in the temp dir")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def report(result: dict[str, Any]) -> Table:
    table = Table(title=f"replay of {result['stream']}: {result['streamed_rows']} rows scored")
    table.add_column("learner")
    table.add_column("prequential accuracy", justify="right")
    table.add_column("recovery (labels)", justify="right")
    table.add_column("first concept at end", justify="right")
    forgetting = result.get("forgetting") or {}

    def recoveries(drifts: list[dict[str, Any]]) -> str:
        return ", ".join(str(d["recovery_labels"]) for d in drifts) or "-"

    table.add_row(
        "[bold]edgeloop[/] (int8, edges)",
        f"{result['prequential_accuracy']:.4f}",
        recoveries(result["drifts"]),
        str(forgetting.get("accuracy_at_end", "-")),
    )
    for name, d in result.get("baseline_details", {}).items():
        best = " *" if name == result.get("best_baseline") else ""
        table.add_row(
            f"{name}{best}",
            f"{d['prequential_accuracy']:.4f}",
            recoveries(d["drifts"]),
            str(d["probe_accuracy"] if d["probe_accuracy"] is not None else "-"),
        )
    table.caption = (
        f"time to serve p50/p95 {result['time_to_serve_p50']}/{result['time_to_serve_p95']} s · "
        f"rounds {result['rounds']} · versions {result['versions_published']} · "
        f"{result['bytes_downloaded']} bytes downloaded · feedback lost {result['feedback_lost']} · "
        f"failed requests {result['failed_requests']} · {result['achieved_rate']} rows/s · "
        f"baselines {result.get('baselines_s')} s"
    )
    return table


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    console = Console(stderr=args.json)
    options = ReplayOptions(
        dataset=args.dataset,
        label_column=args.label_column,
        edges=args.edges,
        rate=args.rate,
        label_share=args.label_share,
        label_delay=args.label_delay,
        seed_rows=args.seed_rows,
        seed=args.seed,
        quick=args.quick,
        plot=args.plot,
        keep=args.keep,
    )
    from cloud.replay.runner import run_replay

    result = run_replay(options, console)
    console.print(report(result))
    if args.json:
        print(json.dumps(result), file=sys.stdout, flush=True)
    return 0
