"""The demo's figures, from the apps' per-sample answers, and the criteria a run must meet.

Every labeled answer an app gets is one ``Outcome``: when it came, in which
phase, from which version, and its sample score in the task's metric
(``TaskSpec.sample_scores``: 1 or 0 for a right or wrong class, the absolute error
for a regression). The phases:

- ``pre_drift``: before the drift;
- ``drift_before_update``: after the drift, answered by a version published before it;
- ``after_update``: answered by a version published after the drift, in the last
  ``settle_s`` seconds of the run (default: the last 40% of the drift phase; the
  trainer keeps improving after its first post-drift version, and a version
  published just after the drift may have been trained on data from before it:
  the end of the run is where the fleet has settled).

A run is done when nothing was lost or failed, every edge ends on a version
published after the drift, and the metric after the update is back within
``RECOVERY`` (10%) of its pre-drift level in the metric's direction: accuracy
``>= 0.9 * pre``; MAE ``<= 1.1 * pre``.

>>> from shared.task import TaskSpec
>>> reg = TaskSpec.regression(["t"])
>>> recovered(reg, pre=1.0, after=1.09), recovered(reg, pre=1.0, after=1.2)
(True, False)
>>> recovered(TaskSpec.classification(["a", "b"]), pre=0.9, after=0.82)
True
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.task import TaskSpec

#: How close to its pre-drift level the metric must come back: a share of that level.
RECOVERY = 0.10
#: The share of the drift phase, at its end, that the after-update figure is taken over.
SETTLE_SHARE = 0.4


@dataclass
class Phase:
    """Shared, thread-safe timeline: drift on/off and versions published before it."""

    drift: bool = False
    drift_at: float | None = None
    pre_drift_versions: frozenset[int] = frozenset()
    lock: threading.Lock = field(default_factory=threading.Lock)

    def inject_drift(self, published_versions: set[int]) -> None:
        with self.lock:
            self.pre_drift_versions = frozenset(published_versions)
            self.drift_at = time.monotonic()
            self.drift = True


@dataclass(frozen=True)
class Outcome:
    """One labeled answer: its sample score is 1.0/0.0 (right/wrong class) or the
    absolute error (mean over a regression's outputs)."""

    t: float
    drift: bool
    version: int | None
    score: float
    fallback: bool
    adapted: bool = False  # the edge's adaptation answered, not the version itself


def phase_metrics(
    outcomes: list[Outcome], phase: Phase, task: TaskSpec, settle_s: float | None = None
) -> dict[str, Any]:
    """The task's metric in each phase, with its name and direction; for a classifier
    also under the ``acc_*`` names the demo has always reported."""
    pre = [o.score for o in outcomes if not o.drift]
    # The old version's own answers: the edge's adaptation answers for it once it is
    # measurably better (edge/adaptation.py), which is not what the old version does.
    stale = [
        o.score
        for o in outcomes
        if o.drift and o.version in phase.pre_drift_versions and not o.adapted
    ]
    fresh = [
        o
        for o in outcomes
        if o.drift and o.version is not None and o.version not in phase.pre_drift_versions
    ]
    if fresh and phase.drift_at is not None:
        end = max(o.t for o in outcomes)
        window = SETTLE_SHARE * (end - phase.drift_at) if settle_s is None else settle_s
        start = max(phase.drift_at, end - window)
        fresh = [o for o in fresh if o.t >= start]
    figures: dict[str, Any] = {
        "task": task.kind,
        "metric": task.metric,
        "lower_is_better": task.lower_is_better,
        "metric_pre_drift": _mean(pre),
        "metric_drift_before_update": _mean(stale),
        "metric_after_update": _mean([o.score for o in fresh]),
    }
    if task.is_classification:
        figures |= {
            "acc_pre_drift": figures["metric_pre_drift"],
            "acc_drift_before_update": figures["metric_drift_before_update"],
            "acc_after_update": figures["metric_after_update"],
        }
    return figures


def _mean(xs: list[float]) -> float | None:
    return round(math.fsum(xs) / len(xs), 4) if xs else None


def recovered(
    task: TaskSpec, pre: float | None, after: float | None, within: float = RECOVERY
) -> bool:
    """The metric after the update is back within ``within`` (a share) of its pre-drift level."""
    if pre is None or after is None:
        return False
    if task.lower_is_better:
        return after <= (1 + within) * pre
    return after >= (1 - within) * pre


def done_criteria(
    result: Mapping[str, Any], task: TaskSpec, pre_drift_versions: Iterable[int]
) -> dict[str, bool]:
    """Each criterion a demo run must meet, by name."""
    stale = set(pre_drift_versions)
    versions = list(result["edge_versions"].values())
    return {
        "feedback_lost_is_0": result["feedback_lost"] == 0,
        "failed_requests_is_0": result["failed_requests"] == 0,
        "every_edge_on_a_post_drift_version": bool(versions)
        and all(v is not None and v not in stale for v in versions),
        "metric_recovered_within_10pct": recovered(
            task, result["metric_pre_drift"], result["metric_after_update"]
        ),
    }
