"""``edgeloop bench ssp``: data-parallel training with a straggler, for s in {0, 1, 4, inf}.

Four workers (``cloud.learning.parallel``: spawned processes, gloo on loopback)
train the zoo MLP on scikit-learn's digits, each on its quarter of the training
rows; the last worker is slowed 2x and 4x. Every step of every worker sleeps
``--step-ms`` to stand for a machine's compute (four workers share this
machine's cores, so their own compute alone would measure the CPU scheduler);
the slowed worker sleeps ``slow`` times that plus ``slow - 1`` times a step's
measured compute, so that its steps really take ``slow`` times as long.

A last scenario moves the 4x slowdown to the next worker every 2 steps (``4x rot2``):
a straggler that is slow for a while, the case a staleness bound is meant for.

For each case the launching process evaluates, every 25 ms, the mean of the
workers' latest parameters on held-out rows: **time to target** is when that
model first reaches ``--target`` accuracy, **final** is its accuracy when every
worker has done its epochs (**round** seconds). The baseline is one worker with
all the rows and the same per-step sleep, measured in the same run; ratios are
against it. Figures are medians over ``--repeats`` interleaved repeats; ``gap``
is the largest step gap any worker saw at its gate (at most s by construction).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any

from shared.errors import ConfigError

WORKERS = 4
#: (slowdown, rotate): the last worker slowed ``slowdown`` times; with ``rotate`` > 0
#: the slowed role moves to the next worker every ``rotate`` steps (a transient
#: straggler, what a staleness bound is meant to absorb). 1x: no straggler.
SLOWDOWNS: tuple[tuple[float, int], ...] = ((1.0, 0), (2.0, 0), (4.0, 0), (4.0, 2))
QUICK_SLOWDOWNS: tuple[tuple[float, int], ...] = ((4.0, 0),)
STALENESS: tuple[int | None, ...] = (0, 1, 4, None)


@dataclass(frozen=True)
class Config:
    workers: int
    epochs: int
    repeats: int
    step_ms: float
    target: float
    slowdowns: tuple[tuple[float, int], ...] = SLOWDOWNS
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quick", action="store_true", help="4x slowed only, 3 epochs, one repeat, target 0.8"
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs of each worker's share (8)")
    p.add_argument("--repeats", type=int, default=None, help="repeats of every case (2)")
    p.add_argument("--step-ms", type=float, default=5.0, help="sleep of every step (ms)")
    p.add_argument("--target", type=float, default=None, help="target accuracy (0.9)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON on the last line")


def config_of(args: argparse.Namespace) -> Config:
    quick = bool(args.quick)
    config = Config(
        workers=WORKERS,
        epochs=args.epochs or (3 if quick else 8),
        repeats=args.repeats or (1 if quick else 2),
        step_ms=args.step_ms,
        target=args.target or (0.8 if quick else 0.9),
        slowdowns=QUICK_SLOWDOWNS if quick else SLOWDOWNS,
    )
    if config.epochs < 1 or config.repeats < 1:
        raise ConfigError("--epochs and --repeats must be at least 1")
    if config.step_ms < 0 or not 0 < config.target <= 1:
        raise ConfigError("--step-ms must be 0 or more and --target in (0, 1]")
    return config


@dataclass
class Runs:
    """The repeats of one case."""

    to_target: list[float] = field(default_factory=list)
    round: list[float] = field(default_factory=list)
    final: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    gap: int = 0

    def add(self, result: Any, target: float) -> None:
        from cloud.learning.parallel import time_to

        self.to_target.append(time_to(result.curve, target))
        self.round.append(result.seconds)
        self.final.append(result.curve[-1][1])
        self.first.append(result.workers[0].seconds)
        self.last.append(result.workers[-1].seconds)
        self.gap = max(self.gap, result.max_gap)

    def summary(self) -> dict[str, Any]:
        med = statistics.median
        return {
            "time_to_target_s": _round(med(self.to_target)),
            "round_s": _round(med(self.round)),
            "final_accuracy": round(med(self.final), 4),
            "first_worker_s": _round(med(self.first)),
            "last_worker_s": _round(med(self.last)),
            "max_gap": self.gap,
        }


def _round(x: float) -> float | None:
    return None if math.isinf(x) else round(x, 3)


def measure(config: Config, progress: Any = None) -> dict[str, Any]:
    """Every case ``config.repeats`` times on one pool of workers; the figures."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    from cloud.data.datasets import load_dataset
    from cloud.learning.contract import DataInfo, build_model
    from cloud.learning.parallel import Case, Parallelism, Pool, straggler_delays
    from cloud.learning.training import Hyperparameters

    ds = load_dataset("digits")
    train, test = train_test_split(
        np.arange(len(ds.y)), test_size=0.25, stratify=ds.y, random_state=config.seed
    )
    model = build_model("mlp", DataInfo.of(ds.subset(train)), seed=config.seed)
    holdout = (ds.X[test], ds.y[test])
    hp = Hyperparameters(config.epochs, config.batch_size, config.lr, config.seed)
    step = config.step_ms / 1000
    baseline = Runs()
    cases = {(slow, s): Runs() for slow in config.slowdowns for s in STALENESS}
    compute: list[float] = []
    with Pool(model, ds.X[train], ds.y[train], Parallelism(config.workers)) as pool:
        # a discarded first case: the workers' first steps pay for lazy set-up
        pool.run(Case(Hyperparameters(1, config.batch_size, config.lr, 0), None), holdout)
        for _ in range(config.repeats):
            got = pool.run(Case(hp, None, delays=(step,), ranks=1), holdout)
            baseline.add(got, config.target)
            solo = got.workers[0]
            compute.append(max(solo.seconds / solo.steps - step, 0.0))
            for (slow, rotate), s in cases:
                delays = straggler_delays(config.workers, step, slow, statistics.median(compute))
                got = pool.run(Case(hp, s, delays, rotate), holdout)
                cases[(slow, rotate), s].add(got, config.target)
                if progress is not None:
                    progress()
    base = baseline.summary()
    rows = []
    for ((slow, rotate), s), runs in cases.items():
        staleness = "inf" if s is None else s
        row = {"slowdown": slow, "rotate": rotate, "staleness": staleness, **runs.summary()}
        row["time_to_target_ratio"] = _ratio(row["time_to_target_s"], base["time_to_target_s"])
        row["round_ratio"] = _ratio(row["round_s"], base["round_s"])
        row["accuracy_delta"] = round(row["final_accuracy"] - base["final_accuracy"], 4)
        rows.append(row)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "cores": os.cpu_count(),
        "load_average_1m": load,
        "config": {**config.__dict__, "slowdowns": [list(x) for x in config.slowdowns]},
        "step_compute_ms": round(statistics.median(compute) * 1000, 3),
        "baseline": {"workers": 1, **base},
        "cases": rows,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    config = config_of(args)
    total = config.repeats * len(config.slowdowns) * len(STALENESS)
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("ssp cases", total=total)
        figures = measure(config, lambda: bar.advance(task))
    _table(figures)
    if args.json:
        print(json.dumps(figures))
    return 0


def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _table(figures: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    c = figures["config"]
    title = (
        f"{c['workers']} workers on digits, the last one slowed: target accuracy "
        f"{c['target']:.2f}, {c['epochs']} epochs, {c['step_ms']:g} ms sleep a step, median of "
        f"{c['repeats']}; {figures['cores']} cores (load {figures['load_average_1m']:.1f}); "
        "'-': target never reached; /1w, -1w: against one worker; w0, wN: the first and "
        "last worker (the last is the slowed one); rotN: the slowed role moves on every N steps"
    )
    t = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    for column in ("slowed", "s", "target s", "/1w", "round s", "w0 s", "wN s", "acc",
                   "-1w", "gap"):  # fmt: skip
        t.add_column(column, justify="right", no_wrap=True)
    b = figures["baseline"]
    t.add_row("1 worker", "", _seconds(b["time_to_target_s"]), "1.00", _seconds(b["round_s"]),
              "", "", f"{b['final_accuracy']:.3f}", "", "")  # fmt: skip
    for r in figures["cases"]:
        t.add_row(
            f"{r['slowdown']:g}x" + (f" rot{r['rotate']}" if r.get("rotate") else ""),
            str(r["staleness"]),
            _seconds(r["time_to_target_s"]),
            "-" if r["time_to_target_ratio"] is None else f"{r['time_to_target_ratio']:.2f}",
            _seconds(r["round_s"]),
            _seconds(r["first_worker_s"]),
            _seconds(r["last_worker_s"]),
            f"{r['final_accuracy']:.3f}",
            f"{r['accuracy_delta']:+.3f}",
            str(r["max_gap"]),
        )
    Console().print(t)
    sys.stdout.flush()
