"""``edgeloop bench deltas``: what an update costs on the wire, budgeted vs full re-export.

The digits drift scenario, run twice through the trainer's own code (a real
``cloud.trainer.loop.Trainer`` on a private redis-server, feedback events through
ingest, count-triggered rounds): once with ``update_mode = "budgeted"``, once
with ``"full"`` (a freshly calibrated export every update). Both runs get the
same bootstrap and the same labeled samples in the same order: a warm-up of upright labels (ingested
without a round, so that the gate's recent window is more than a dozen samples
at the first update), a few updates of upright digits, then the inputs rotate
by 90 degrees (``cloud.data.datasets.drift``) and stay rotated. Samples come from
the dataset's stream pool, held-out rows aside; a scenario longer than the
pool goes through it again, reshuffled. The measured ``zstd --patch-from``
(CLI 1.5.4) was within 8 bytes of the python-zstandard figure on a digits pair.

Per update, for what each run published:

- **delta**: our patch (``shared.delta.make_patch``, what the registry serves)
  from the previous budgeted version to the new one;
- **full**: the artifact as zstd level 19 (what shipping the file costs);
- **patch-from**: ``zstd --patch-from`` between consecutive unconstrained
  artifacts, computed as python-zstandard at level 19 with the previous file as
  a raw-content dictionary, which is what ``--patch-from`` does;
- **accuracy** of each run's current version, in the edge runtime, on held-out
  stream samples that neither run trains on: upright and rotated (the mean of
  the two is the headline).

The scenario runs on several **streams** (``--streams``, default 3): the same
scenario with another seed, so another order of samples and other held-out
digits. One stream's final accuracy moves by about a point with which samples
land in the last rounds (600 answers carry a standard error of ~0.7 points, and
the last round's gate decisions flip with them), more than the goal's
0.5-point margin, so the totals add the bytes of every stream and the
accuracies are the mean of the streams' final ones; each stream's own figures
are in the output too.

The goal: delta bytes at most 5% of the full bytes of the same updates, with
the budgeted run's final accuracy within 0.5 points of the unconstrained run's.

Then **every zoo family** (``cloud/benchmarks/families.py``: digits, mlp,
regression_mlp, dwcnn, cnn1d, each on data of its kind with a drift of its own):
a parent, rounds of budgeted children on its frozen grid next to fresh exports,
and one table of the child file's bytes, the full (zstd) and patch bytes, their
ratio and the metric gap (accuracy points, or MAE in the targets' units).
``--families`` picks some (``none``: only the digits trainer runs),
``--no-trainer`` skips the digits trainer runs. With ``--json`` the last line
of stdout is one JSON object (the families under ``families``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from cloud.trainer.loop import Trainer
    from cloud.trainer.settings import TrainerSettings

logger = logging.getLogger(__name__)

GOAL_RATIO = 0.05
GOAL_ACCURACY_POINTS = 0.5


@dataclass(frozen=True)
class Scenario:
    updates: int
    per_update: int  # labeled samples fed before each update
    upright_updates: int  # updates before the drift
    eval_size: int  # held-out stream samples (each evaluated upright and rotated)
    warmup: int = 150  # upright labels ingested before the first update (no round)
    seed: int = 0
    streams: int = 3  # the scenario again with seeds seed, seed + 1, ...


QUICK = Scenario(updates=10, per_update=72, upright_updates=2, eval_size=300)
FULL = Scenario(updates=16, per_update=72, upright_updates=2, eval_size=300)

#: Trainer settings of both runs (the update mode aside): count-triggered rounds of
#: exactly one update's samples, and a gate that publishes any child that is no worse
#: on the recent window (min_gain 0) and does not forget, so that the runs are
#: sequences of continual updates.
BENCH_SETTINGS: dict[str, Any] = {
    "release": "direct",  # the edges follow each published version at once
    "round_interval_s": 3600.0,
    "drift_window": 10_000,
    "gate_min_recent": 10,
    "min_gain": 0.0,
    "status_interval_s": 3600.0,
    "block_ms": 10,
    # rounds run inside step() here, where nothing renews the lease while they train
    "lock_ttl_ms": 3_600_000,
}


@dataclass
class RunRow:
    """One update of one run."""

    published: bool
    version: int | None
    reason: str
    scales: str | None = None  # frozen, activations, recalibrated (details["delta"])
    recalibrated_for: str | None = None  # why: clipping, gate, layout, full mode
    residual_l2: float | None = None
    budget_bytes: int | None = None
    bytes_changed: int = 0  # bytes of the file that differ from the previous version
    delta_bytes: int = 0  # make_patch from the previous version
    full_bytes: int = 0  # zstd -19 of the artifact
    patch_from_bytes: int = 0  # zstd --patch-from the previous version
    acc_upright: float = 0.0
    acc_rotated: float = 0.0
    seconds: float = 0.0

    @property
    def acc(self) -> float:
        return (self.acc_upright + self.acc_rotated) / 2


@dataclass
class Stream:
    """Both runs of one stream (seed)."""

    seed: int
    budgeted: list[RunRow] = field(default_factory=list)
    unconstrained: list[RunRow] = field(default_factory=list)

    def final(self) -> tuple[float, float]:
        """Final accuracy of the budgeted and the unconstrained run."""
        b, u = self.budgeted, self.unconstrained
        return (b[-1].acc if b else 0.0), (u[-1].acc if u else 0.0)

    def figures(self) -> dict[str, Any]:
        b, u = self.budgeted, self.unconstrained
        delta = sum(r.delta_bytes for r in b if r.published)
        full = sum(r.full_bytes for r in b if r.published)
        acc_b, acc_u = self.final()
        return {
            "seed": self.seed,
            "delta_bytes": delta,
            "full_bytes": full,
            "patch_from_bytes": sum(r.patch_from_bytes for r in u if r.published),
            "full_bytes_unconstrained": sum(r.full_bytes for r in u if r.published),
            "delta_ratio": round(delta / full, 4) if full else None,
            "acc_budgeted": round(acc_b, 4),
            "acc_unconstrained": round(acc_u, 4),
            "acc_gap_points": round(100 * (acc_u - acc_b), 2),
            "published_budgeted": sum(r.published for r in b),
            "published_unconstrained": sum(r.published for r in u),
        }


@dataclass
class Result:
    scenario: Scenario
    streams: list[Stream] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        each = [s.figures() for s in self.streams]
        delta = sum(f["delta_bytes"] for f in each)
        full = sum(f["full_bytes"] for f in each)
        finals = [s.final() for s in self.streams] or [(0.0, 0.0)]
        acc_b = sum(b for b, _ in finals) / len(finals)
        acc_u = sum(u for _, u in finals) / len(finals)
        ratio = delta / full if full else None
        gap = round(100 * (acc_u - acc_b), 2)  # points, as printed
        budgets = [r.budget_bytes for s in self.streams for r in s.budgeted if r.budget_bytes]
        return {
            "delta_bytes_total": delta,
            "full_bytes_total": full,
            "patch_from_bytes_total": sum(f["patch_from_bytes"] for f in each),
            "full_bytes_total_unconstrained": sum(f["full_bytes_unconstrained"] for f in each),
            "delta_ratio": None if ratio is None else round(ratio, 4),
            "acc_budgeted": round(acc_b, 4),
            "acc_unconstrained": round(acc_u, 4),
            "acc_gap_points": gap,
            "streams": len(each),
            "published_budgeted": sum(f["published_budgeted"] for f in each),
            "published_unconstrained": sum(f["published_unconstrained"] for f in each),
            "budget_bytes": min(budgets, default=None),
            "goal_met": ratio is not None and ratio <= GOAL_RATIO and gap <= GOAL_ACCURACY_POINTS,
        }

    def as_json(self) -> dict[str, Any]:
        runs = [
            {
                **stream.figures(),
                "updates": [
                    {
                        "update": i + 1,
                        "rotated": i >= self.scenario.upright_updates,
                        "budgeted": {**asdict(rb), "acc": round(rb.acc, 4)},
                        "unconstrained": {**asdict(ru), "acc": round(ru.acc, 4)},
                    }
                    for i, (rb, ru) in enumerate(
                        zip(stream.budgeted, stream.unconstrained, strict=True)
                    )
                ],
            }
            for stream in self.streams
        ]
        return {
            **self.summary(),
            "runs": runs,
            "scenario": asdict(self.scenario),
            "settings": BENCH_SETTINGS,
            "seconds": round(self.seconds, 1),
        }


# -- the runs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    """What every run of one benchmark shares."""

    url: str  # the private redis-server
    workdir: Path  # the signing keys and each run's blob store
    overrides: dict[str, Any]  # settings of both runs (update_budget_bytes)
    progress: Progress | None


def run_benchmark(
    scenario: Scenario, overrides: dict[str, Any] | None = None, progress: Progress | None = None
) -> Result:
    """Both runs on one private redis-server; ``overrides`` go into both runs' settings."""
    from cloud.demo.services import ProcessGroup, start_redis
    from shared.signing import write_keypair

    start = time.perf_counter()
    result = Result(scenario)
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-") as tmp:
        workdir = Path(tmp)
        group = ProcessGroup(workdir)
        try:
            bench = Bench(start_redis(group), workdir, overrides or {}, progress)
            write_keypair(workdir / "keys")
            for k in range(scenario.streams):
                one = replace(scenario, seed=scenario.seed + k)
                budgeted, full = (_run(bench, mode, one) for mode in ("budgeted", "full"))
                result.streams.append(Stream(one.seed, budgeted, full))
        finally:
            group.stop_all()
    result.seconds = time.perf_counter() - start
    return result


def _run(bench: Bench, mode: str, scenario: Scenario) -> list[RunRow]:
    """One run of one stream: a trainer in ``mode`` through the scenario's updates."""
    import redis

    from cloud.data.datasets import drift, load_dataset, split
    from cloud.trainer.loop import Trainer
    from shared.runtime import TFLiteModel

    digits = load_dataset("digits")
    stream = split(digits, scenario.seed).stream
    rotate = drift("digits")
    held, feed = _sequence(len(stream.y), scenario)
    X_eval, y_eval = stream.X[held], stream.y[held]
    X_eval_rot = rotate(X_eval)
    client = redis.Redis.from_url(bench.url)
    trainer = Trainer(
        _settings(bench, mode, scenario), client=client, dataset=digits, background_rounds=False
    )
    rows: list[RunRow] = []
    name = f"stream {scenario.seed}, {mode}"
    progress = bench.progress
    task = progress.add_task(f"{name}: bootstrap", total=scenario.updates) if progress else None
    try:
        trainer.start()
        previous = _latest_content(trainer)
        # The fleet has served v1 for a while: a recent window the gate can judge by.
        warm = feed[: scenario.warmup]
        _send(trainer, client, stream.X[warm], stream.y[warm], seq=0)
        while trainer.ingest.poll(10).entries:
            pass
        for i in range(scenario.updates):
            if progress and task is not None:
                progress.update(task, description=f"{name}: update {i + 1}/{scenario.updates}")
            start = scenario.warmup + i * scenario.per_update
            idx = feed[start : start + scenario.per_update]
            X = stream.X[idx] if i < scenario.upright_updates else rotate(stream.X[idx])
            t = time.perf_counter()
            report = _update(trainer, client, X, stream.y[idx], seq=start)
            row = _row(report, seconds=round(time.perf_counter() - t, 2))
            if row.published:
                content = trainer.publisher.content(report["sha256"])
                _measure(row, previous, content)
                previous = content
            current = TFLiteModel(previous)
            row.acc_upright = _accuracy(current, X_eval, y_eval)
            row.acc_rotated = _accuracy(current, X_eval_rot, y_eval)
            rows.append(row)
            if progress and task is not None:
                progress.advance(task)
    finally:
        trainer.close()
        client.close()
    return rows


def _settings(bench: Bench, mode: str, scenario: Scenario) -> TrainerSettings:
    from cloud.trainer.settings import TrainerSettings

    return TrainerSettings(
        fleet=f"bench-{mode}-{scenario.seed}",
        redis_url=bench.url,
        consumer=f"bench-{mode}",
        update_mode=mode,
        signing_key=bench.workdir / "keys" / "signing.key",
        blob_dir=bench.workdir / f"blobs-{mode}-{scenario.seed}",
        round_min_samples=scenario.per_update,
        **{**BENCH_SETTINGS, **bench.overrides},
    )


def _latest_content(trainer: Trainer) -> bytes:
    latest = trainer.publisher.latest(trainer.settings.model_name)
    if latest is None:
        raise RuntimeError("the trainer started without publishing a first version")
    return trainer.publisher.content(latest[1])


def _row(report: dict[str, Any], seconds: float) -> RunRow:
    """An update's row from the round's report (the byte and accuracy figures come later)."""
    delta = (report.get("details") or {}).get("delta") or {}
    return RunRow(
        published=bool(report.get("published")),
        version=report.get("version"),
        reason=str(report.get("reason", report.get("error", ""))),
        scales=delta.get("scales"),
        recalibrated_for=delta.get("reason"),
        residual_l2=delta.get("residual_l2"),
        budget_bytes=delta.get("budget_bytes"),
        seconds=seconds,
    )


def _sequence(n: int, scenario: Scenario) -> tuple[Any, Any]:
    """Held-out rows, and the rows fed in order: the rest of the pool, shuffled, and
    reshuffled for another pass when the updates need more (a stream repeats itself)."""
    import numpy as np

    if scenario.eval_size >= n:
        raise ConfigError(f"the stream pool has {n} samples; eval_size must be smaller")
    rng = np.random.default_rng(scenario.seed)
    order = rng.permutation(n)
    held, pool = order[: scenario.eval_size], order[scenario.eval_size :]
    needed = scenario.warmup + scenario.updates * scenario.per_update
    passes = [pool] + [rng.permutation(pool) for _ in range(needed // len(pool))]
    return held, np.concatenate(passes)[:needed]


def _send(trainer: Any, client: Any, X: Any, y: Any, seq: int) -> None:
    """Labeled samples as four devices' feedback events (ids unique from ``seq`` on)."""
    from shared.messages import FeedbackEvent

    pipe = client.pipeline(transaction=False)
    for j in range(len(y)):
        device = f"bench-{(seq + j) % 4}"
        event = FeedbackEvent(
            event_id=f"{device}:e0:{(seq + j) // 4}",
            device_id=device,
            model=trainer.settings.model_name,
            x=[float(v) for v in X[j]],
            label=int(y[j]),
        )
        pipe.xadd(trainer.keys.feedback_of(trainer.settings.model_name), {"data": event.to_wire()})
    pipe.execute()


def _update(trainer: Any, client: Any, X: Any, y: Any, seq: int) -> dict[str, Any]:
    """Feed one update's samples; step the trainer until the round they start is done."""
    _send(trainer, client, X, y, seq)
    done = trainer.status.rounds + trainer.status.rounds_rejected
    deadline = time.monotonic() + 600
    while trainer.status.rounds + trainer.status.rounds_rejected == done:
        if time.monotonic() > deadline:
            raise TimeoutError("no round ran within 600 s of feeding an update")
        trainer.step(block_ms=10)
    return dict(trainer.status.last_round or {})


def _measure(row: RunRow, previous: bytes, content: bytes) -> None:
    import numpy as np
    import zstandard

    from shared.delta import make_patch

    row.full_bytes = len(zstandard.ZstdCompressor(level=19).compress(content))
    row.delta_bytes = len(make_patch(previous, content))
    raw = zstandard.ZstdCompressionDict(previous, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    row.patch_from_bytes = len(zstandard.ZstdCompressor(level=19, dict_data=raw).compress(content))
    a, b = np.frombuffer(previous, np.uint8), np.frombuffer(content, np.uint8)
    row.bytes_changed = int(np.count_nonzero(a != b)) if len(a) == len(b) else len(b)


def _accuracy(model: Any, X: Any, y: Any) -> float:
    return float((model.predict_proba_batch(X).argmax(1) == y).mean())


# -- the command ------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help=f"{QUICK.updates} updates (a few minutes)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument(
        "--updates", type=_positive, help="number of updates (default 10 quick, 16 full)"
    )
    p.add_argument("--streams", type=_positive, help="seeds the scenario runs on (default 3)")
    p.add_argument("--budget-bytes", type=_positive, help="update_budget_bytes of the budgeted run")
    p.add_argument(
        "--families",
        type=_families,
        default=None,
        help="zoo families of the per-family table, comma-separated (default: all; none: skip)",
    )
    p.add_argument(
        "--no-trainer", action="store_true", help="skip the digits trainer runs (families only)"
    )


def _families(text: str) -> tuple[str, ...]:
    from cloud.benchmarks.families import FAMILIES

    if text.strip() == "none":
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown family {unknown[0]!r}; families: {', '.join(FAMILIES)} (or none)"
        )
    return names


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    scenario = QUICK if args.quick else FULL
    if args.updates:
        scenario = replace(scenario, updates=args.updates)
    if args.streams:
        scenario = replace(scenario, streams=args.streams)
    overrides = {"update_budget_bytes": args.budget_bytes} if args.budget_bytes else {}
    # The trainer logs every round; the progress bar says enough.
    for name in ("cloud", "edge", "shared"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    err = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    from cloud.benchmarks.families import FAMILIES, FULL_SIZES, QUICK_SIZES, run_families

    families = FAMILIES if args.families is None else args.families
    result: Result | None = None
    with Progress(*columns, console=err, transient=True) as progress:
        if not args.no_trainer:
            result = run_benchmark(scenario, overrides, progress)
        per_family = run_families(families, QUICK_SIZES if args.quick else FULL_SIZES, 0, progress)
    if args.json:
        out = result.as_json() if result is not None else {}
        out["families"] = [f.figures() for f in per_family]
        print(json.dumps(out, separators=(",", ":")))
        return 0
    console = Console()
    if result is not None:
        _print_table(result, console)
    if per_family:
        from cloud.benchmarks.families import families_table

        console.print(families_table(per_family))
    return 0


#: Columns of a stream's table: header, left-aligned.
_COLUMNS = (
    ("update", False),
    ("data", True),
    ("budgeted: scales", True),
    ("changed B", False),
    ("delta B", False),
    ("full B", False),
    ("acc", False),
    ("unconstr.: full B", False),
    ("patch-from B", False),
    ("acc", False),
)


def _print_table(result: Result, console: Console) -> None:
    for stream in result.streams:
        console.print(_stream_table(stream, result.scenario))
    s = result.summary()
    ratio = "n/a" if s["delta_ratio"] is None else f"{s['delta_ratio']:.1%}"
    verdict = "[green]met[/]" if s["goal_met"] else "[red]not met[/]"
    console.print(
        f"{s['streams']} streams: delta / full {ratio} (goal ≤ {GOAL_RATIO:.0%}); final accuracy "
        f"{s['acc_budgeted']:.3f} budgeted vs {s['acc_unconstrained']:.3f} unconstrained, gap "
        f"{s['acc_gap_points']:+.2f} points (goal ≤ {GOAL_ACCURACY_POINTS}); goal {verdict}; "
        f"{result.seconds:.0f}s"
    )


def _stream_table(stream: Stream, scenario: Scenario) -> Table:
    """One stream's updates, both runs side by side, and its totals."""
    from rich.table import Table

    table = Table(
        title=f"Bytes per update, stream {stream.seed}: budgeted trainer vs full "
        "re-export (digits, rotation drift)"
    )
    for col, left in _COLUMNS:
        table.add_column(col, justify="left" if left else "right")
    for i, (b, u) in enumerate(zip(stream.budgeted, stream.unconstrained, strict=True)):
        budgeted = [_n(b.bytes_changed, b.published), _n(b.delta_bytes, b.published)]
        budgeted += [_n(b.full_bytes, b.published), f"{b.acc:.3f}"]
        unconstrained = [_n(u.full_bytes, u.published), _n(u.patch_from_bytes, u.published)]
        table.add_row(
            str(i + 1),
            "rotated" if i >= scenario.upright_updates else "upright",
            (b.scales or "-") if b.published else "rejected",
            *budgeted,
            *unconstrained,
            f"{u.acc:.3f}",
        )
    f = stream.figures()
    table.add_section()
    totals = [f"{f['delta_bytes']:,}", f"{f['full_bytes']:,}", f"{f['acc_budgeted']:.3f}"]
    totals += [f"{f['full_bytes_unconstrained']:,}", f"{f['patch_from_bytes']:,}"]
    table.add_row("total", "", "", "", *totals, f"{f['acc_unconstrained']:.3f}")
    return table


def _n(value: int, published: bool) -> str:
    return f"{value:,}" if published else "-"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(
        run(
            argparse.Namespace(
                quick=True,
                json=True,
                updates=None,
                streams=None,
                budget_bytes=None,
                families=None,
                no_trainer=False,
            )
        )
    )
