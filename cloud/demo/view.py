"""The demo's live view and its closing summary (rich tables)."""

from __future__ import annotations

import time

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cloud.demo.apps import SensorApp
from shared.messages import EdgeCounters, EdgeStatus, TrainerStatus


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _metric(x: float | None, metric: str) -> str:
    """Accuracy as a percentage, an error in the outputs' units."""
    if metric == "accuracy":
        return _pct(x)
    return "–" if x is None else f"{x:.3f}"


#: The edges table's columns (one row per edge).
EDGE_COLUMNS = (
    "device",
    "version",
    "state",
    "rolling metric",
    "predictions",
    "feedback sent",
    "fallbacks",
    "swaps",
    "refused",
    "p99 ms",
)


def edges_table(
    statuses: dict[str, EdgeStatus | None], apps: dict[str, SensorApp], metric: str = "accuracy"
) -> Table:
    """One row per edge; ``metric`` is the task's (the rolling column's unit)."""
    t = Table(title="edges", expand=True)
    for col in EDGE_COLUMNS:
        name = (
            f"rolling {'acc' if metric == 'accuracy' else metric}"
            if col == "rolling metric"
            else col
        )
        t.add_column(name, justify="right" if col != "device" else "left")
    for device, status in statuses.items():
        app = apps.get(device)
        if status is None:
            t.add_row(device, "–", "[yellow]no report[/]", *["–"] * 7)
            continue
        c = status.counters
        # the edge's own figure when it reports one, else what its app measured
        rolling = next(
            (
                x
                for x in (
                    status.rolling_metric,
                    status.rolling_accuracy if metric == "accuracy" else None,
                    app.stats.rolling_metric if app else None,
                )
                if x is not None
            ),
            None,
        )
        t.add_row(
            device,
            f"v{status.version}" if status.version is not None else "baseline",
            status.state,
            _metric(rolling, metric),
            str(c.predictions),
            str(c.feedback_sent),
            _fallbacks(c),
            str(c.swaps),
            str(c.updates_refused),
            "–" if status.latency_ms_p99 is None else f"{status.latency_ms_p99:.2f}",
        )
    return t


def _fallbacks(c: EdgeCounters) -> str:
    """Fallback answers, with their count by reason when there are any."""
    if not c.fallback_reasons:
        return str(c.fallback_predictions)
    reasons = ", ".join(f"{k}:{v}" for k, v in c.fallback_reasons.items())
    return f"{c.fallback_predictions} ({reasons})"


def cloud_table(trainer: TrainerStatus | None) -> Table:
    t = Table(title="cloud trainer", expand=True)
    for col in ("version", "trigger", "published", "metrics"):
        t.add_column(col)
    if trainer is None:
        t.add_row("–", "starting", "", "")
        return t
    for v in trainer.published[-8:]:
        metrics = ", ".join(f"{k} {val:.3f}" for k, val in sorted(v.metrics.items())[:4])
        t.add_row(
            f"v{v.version}",
            v.trigger,
            time.strftime("%H:%M:%S", time.localtime(v.published_at)),
            metrics,
        )
    t.caption = (
        f"rounds {trainer.rounds + trainer.rounds_rejected} (published {trainer.rounds}, "
        f"rejected by the gate {trainer.rounds_rejected}) · accepted {trainer.feedback_accepted} · "
        f"duplicates {trainer.feedback_duplicates} · dead-lettered {trainer.feedback_deadlettered}"
    )
    return t


def live_view(
    headline: str,
    statuses: dict[str, EdgeStatus | None],
    apps: dict[str, SensorApp],
    trainer: TrainerStatus | None,
    metric: str = "accuracy",
    redis_state: str | None = None,
) -> Group:
    """The headline, the edges and the trainer; ``redis_state`` (an outage of the
    demo's Redis, ``RedisWatch.state``) under the headline while it lasts, with the
    trainer's last report read before it."""
    head = Text(headline, style="bold")
    if redis_state:
        head.append(f"\n{redis_state}: ", style="bold red")
        head.append("the edges spool their feedback; the demo goes on when it answers")
    return Group(
        Panel(head),
        edges_table(statuses, apps, metric),
        cloud_table(trainer),
    )


def summary_table(result: dict[str, object]) -> Table:
    t = Table(title="edgeloop demo: summary")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        t.add_row(key, str(value))
    return t
