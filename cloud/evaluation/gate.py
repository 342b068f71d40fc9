"""The gate: a child version is published only if it beats its parent where it matters.

Both are judged as ARTIFACTS, the int8 TFLite files run in the edge runtime,
because that is what the fleet will serve; a torch model that wins while its
int8 file loses must not ship. Both are judged by the task's metric
(``TaskSpec.score``: accuracy, or a regressor's MAE, lower is better) on two
data sets (see cloud/data/replay.py):

- the **recent window** (the newest held-out samples): the child must gain at
  least ``min_gain`` over the parent, or there is no reason to ship;
- the **holdout reservoir** (held-out samples from all time, "earlier data"):
  the child may lose at most ``forgetting_tolerance``, so that learning the new
  distribution does not silently forget the old one.

For a classifier both are accuracy points; for a regressor, fractions of the
parent's MAE (a gain of 0.01 is an error 1% lower), so that one setting fits
targets of any scale.

>>> import numpy as np
>>> m = Metrics.of(np.array([0, 1, 0, 0]), np.array([0, 1, 1, 0]), ["a", "b"])
>>> m.accuracy, m.recall
(0.75, {'a': 1.0, 'b': 0.5})
>>> r = Metrics.of_answers(np.array([[1.0], [3.0]]), np.array([[2.0], [3.0]]), TaskSpec.regression(["t"]))
>>> r.mae, r.rmse, r.r2
(0.5, 0.707107, -1.0)
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.data.replay import Samples
from cloud.export.artifact import Artifact
from shared.task import TaskSpec

__all__ = ["Decision", "GateRule", "HeldOut", "Metrics", "Samples", "evaluate", "gate"]

logger = logging.getLogger(__name__)

#: The figures of a regressor's evaluation, in the manifest's metrics.
REGRESSION_FIGURES = ("mae", "rmse", "r2")


@dataclass(frozen=True)
class Metrics:
    """The task's figures on one data set (None/absent when it is empty): accuracy and
    per-class recall, or MAE, RMSE and R²."""

    accuracy: float | None
    samples: int
    recall: dict[str, float] = field(default_factory=dict)
    mae: float | None = None
    rmse: float | None = None
    r2: float | None = None

    @classmethod
    def of(
        cls,
        predicted: npt.NDArray[np.int64],
        y: npt.NDArray[np.int64],
        labels: list[str],
        weights: npt.NDArray[np.float64] | None = None,
    ) -> Metrics:
        """A classifier's figures from its predicted classes (``weights``: per sample,
        e.g. the per-device share cap's; default all 1)."""
        w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
        if len(y) == 0 or w.sum() <= 0:
            return cls(None, 0)
        hit = (predicted == y).astype(np.float64)
        recall = {
            labels[c]: round(float(np.average(hit[y == c], weights=w[y == c])), 4)
            for c in range(len(labels))
            if w[y == c].sum() > 0
        }
        return cls(round(float(np.average(hit, weights=w)), 4), len(y), recall)

    @classmethod
    def of_answers(
        cls,
        answers: npt.ArrayLike,
        y: npt.ArrayLike,
        task: TaskSpec,
        weights: npt.NDArray[np.float64] | None = None,
    ) -> Metrics:
        """The figures of answers (probabilities or outputs) against truths."""
        a = np.asarray(answers, np.float64)
        w = np.ones(len(a)) if weights is None else np.asarray(weights, np.float64)
        if len(a) == 0 or w.sum() <= 0:
            return cls(None, 0)
        if task.is_classification:
            return cls.of(a.argmax(axis=1), np.asarray(y, np.int64), task.labels, w)
        t = np.asarray(y, np.float64).reshape(a.shape)
        err = a - t
        wc = w.reshape(-1, *([1] * (a.ndim - 1)))
        total = float(wc.sum()) * (a.size // len(a))
        spread = float((wc * (t - (wc * t).sum(axis=0) / w.sum()) ** 2).sum())
        sq = float((wc * err**2).sum())
        r2 = 1.0 - sq / spread if spread > 0 else None
        return cls(
            None,
            len(a),
            mae=round(float((wc * np.abs(err)).sum()) / total, 6),
            rmse=round(float(np.sqrt(sq / total)), 6),
            r2=None if r2 is None else round(r2, 6),
        )

    def value(self, task: TaskSpec) -> float | None:
        """The task's metric: accuracy, or MAE."""
        return self.accuracy if task.is_classification else self.mae


def evaluate(
    artifact: Artifact,
    samples: Samples,
    task: TaskSpec,
    weights: npt.NDArray[np.float64] | None = None,
) -> Metrics:
    """Metrics of an artifact, run in the edge runtime, on (X, y), samples weighted by
    ``weights`` (default: all alike)."""
    X, y = samples
    if len(y) == 0:
        return Metrics(None, 0)
    return Metrics.of_answers(artifact.answers(X), y, task, weights)


@dataclass(frozen=True)
class HeldOut:
    """The held-out data versions are judged on (cloud/data/replay.py), and the task.

    The weights cap one device's share of the judgment (cloud/data/admission.py:
    ``device_weights``); None weighs every sample alike."""

    earlier: Samples  # the holdout reservoir: held-out samples from all time
    recent: Samples  # the recent window: the newest held-out samples
    task: TaskSpec
    earlier_weights: npt.NDArray[np.float64] | None = None
    recent_weights: npt.NDArray[np.float64] | None = None

    @property
    def labels(self) -> list[str]:
        return self.task.labels


@dataclass(frozen=True)
class GateRule:
    """How much better a child must be on the recent window, and how much it may forget
    (accuracy points; for a regressor, fractions of the parent's MAE)."""

    min_gain: float
    forgetting_tolerance: float


@dataclass(frozen=True)
class Decision:
    publish: bool
    reason: str
    parent_recent: Metrics
    parent_earlier: Metrics
    child_recent: Metrics
    child_earlier: Metrics
    rule: GateRule
    task: TaskSpec

    @property
    def child_value(self) -> float | None:
        """The child's metric on the recent window."""
        return self.child_recent.value(self.task)

    def metrics(self) -> dict[str, float]:
        """Flat numbers for the manifest (the child's are the version's own)."""
        sides = {
            "recent": self.child_recent,
            "earlier": self.child_earlier,
            "parent_recent": self.parent_recent,
            "parent_earlier": self.parent_earlier,
        }
        if self.task.is_classification:
            out = {f"{name}_accuracy": m.accuracy for name, m in sides.items()}
        else:
            out = {
                f"{name}_{figure}": getattr(m, figure)
                for name, m in sides.items()
                for figure in REGRESSION_FIGURES
            }
        out["recent_samples"] = float(self.child_recent.samples)
        out["earlier_samples"] = float(self.child_earlier.samples)
        return {k: float(v) for k, v in out.items() if v is not None}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate(parent: Artifact, child: Artifact, data: HeldOut, rule: GateRule) -> Decision:
    """Evaluate both artifacts and decide whether the child replaces the parent."""

    def both(samples: Samples, w: npt.NDArray[np.float64] | None) -> tuple[Metrics, Metrics]:
        return evaluate(parent, samples, data.task, w), evaluate(child, samples, data.task, w)

    recent = both(data.recent, data.recent_weights)
    earlier = both(data.earlier, data.earlier_weights)
    publish, reason = _decide(recent, earlier, rule, data.task)
    decision = Decision(
        publish, reason, recent[0], earlier[0], recent[1], earlier[1], rule, data.task
    )
    logger.info("gate: %s (%s)", "publish" if publish else "reject", reason)
    return decision


def _decide(
    recent: tuple[Metrics, Metrics],
    earlier: tuple[Metrics, Metrics],
    rule: GateRule,
    task: TaskSpec,
) -> tuple[bool, str]:
    """Publish or not, and why, from the (parent, child) metrics on both sets."""
    p_recent, c_recent = (m.value(task) for m in recent)
    p_earlier, c_earlier = (m.value(task) for m in earlier)
    metric, tolerance = task.metric, rule.forgetting_tolerance

    def _f(value: float) -> str:
        return f"{value:.3f}" if task.is_classification else f"{value:.4g}"

    if c_recent is None or p_recent is None:
        return False, "no recent held-out samples to judge the child on"
    by = _scaled(rule.min_gain, p_recent, task)
    if task.gain(c_recent, over=p_recent) < by - 1e-9:
        return False, (
            f"recent {metric} {_f(c_recent)} does not beat the parent's {_f(p_recent)} by {_f(by)}"
        )
    if c_earlier is not None and p_earlier is not None:
        allowed = _scaled(tolerance, p_earlier, task)
        if task.gain(c_earlier, over=p_earlier) < -allowed - 1e-9:
            return False, (
                f"forgets earlier data: {metric} {_f(c_earlier)} vs the parent's "
                f"{_f(p_earlier)} (tolerance {_f(allowed)})"
            )
        kept = f"earlier {_f(p_earlier)} -> {_f(c_earlier)}"
    else:
        kept = "no earlier data to check forgetting on"
    return True, f"recent {metric} {_f(p_recent)} -> {_f(c_recent)}; {kept}"


def _scaled(amount: float, parent: float, task: TaskSpec) -> float:
    """A rule's amount in the metric's units: accuracy points, or a share of the parent's error."""
    return amount if task.is_classification else amount * abs(parent)
