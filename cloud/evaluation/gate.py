"""The gate: a child version is published only if it beats its parent where it matters.

Both are judged as ARTIFACTS, the int8 TFLite files run in the edge runtime,
because that is what the fleet will serve; a torch model that wins while its
int8 file loses must not ship. Two data sets (see cloud/data/replay.py):

- the **recent window** (the newest held-out samples): the child must gain at
  least ``min_gain`` accuracy over the parent, or there is no reason to ship;
- the **holdout reservoir** (held-out samples from all time, "earlier data"):
  the child may lose at most ``forgetting_tolerance``, so that learning the new
  distribution does not silently forget the old one.

>>> import numpy as np
>>> m = Metrics.of(np.array([0, 1, 0, 0]), np.array([0, 1, 1, 0]), ["a", "b"])
>>> m.accuracy, m.recall
(0.75, {'a': 1.0, 'b': 0.5})
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.runtime import TFLiteModel

logger = logging.getLogger(__name__)

Samples = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]


@dataclass(frozen=True)
class Metrics:
    """Accuracy and per-class recall on one data set (None/absent when it is empty)."""

    accuracy: float | None
    samples: int
    recall: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(
        cls, predicted: npt.NDArray[np.int64], y: npt.NDArray[np.int64], labels: list[str]
    ) -> Metrics:
        if len(y) == 0:
            return cls(None, 0)
        hit = predicted == y
        recall = {
            labels[c]: round(float(hit[y == c].mean()), 4)
            for c in range(len(labels))
            if np.any(y == c)
        }
        return cls(round(float(hit.mean()), 4), len(y), recall)


def evaluate(model: TFLiteModel, samples: Samples, labels: list[str]) -> Metrics:
    """Metrics of an artifact, run in the edge runtime, on (X, y)."""
    X, y = samples
    if len(y) == 0:
        return Metrics(None, 0)
    return Metrics.of(model.predict_proba_batch(X).argmax(axis=1), y, labels)


@dataclass(frozen=True)
class HeldOut:
    """The held-out data versions are judged on (cloud/data/replay.py), and the class names."""

    earlier: Samples  # the holdout reservoir: held-out samples from all time
    recent: Samples  # the recent window: the newest held-out samples
    labels: list[str]


@dataclass(frozen=True)
class GateRule:
    """How much better a child must be on the recent window, and how much it may forget."""

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

    def metrics(self) -> dict[str, float]:
        """Flat numbers for the manifest (the child's are the version's own)."""
        out = {
            "recent_accuracy": self.child_recent.accuracy,
            "earlier_accuracy": self.child_earlier.accuracy,
            "parent_recent_accuracy": self.parent_recent.accuracy,
            "parent_earlier_accuracy": self.parent_earlier.accuracy,
            "recent_samples": float(self.child_recent.samples),
            "earlier_samples": float(self.child_earlier.samples),
        }
        return {k: float(v) for k, v in out.items() if v is not None}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate(parent: TFLiteModel, child: TFLiteModel, data: HeldOut, rule: GateRule) -> Decision:
    """Evaluate both artifacts and decide whether the child replaces the parent."""

    def both(samples: Samples) -> tuple[Metrics, Metrics]:
        return evaluate(parent, samples, data.labels), evaluate(child, samples, data.labels)

    recent, earlier = both(data.recent), both(data.earlier)
    publish, reason = _decide(recent, earlier, rule)
    decision = Decision(publish, reason, recent[0], earlier[0], recent[1], earlier[1], rule)
    logger.info("gate: %s (%s)", "publish" if publish else "reject", reason)
    return decision


def _decide(
    recent: tuple[Metrics, Metrics], earlier: tuple[Metrics, Metrics], rule: GateRule
) -> tuple[bool, str]:
    """Publish or not, and why, from the (parent, child) metrics on both sets."""
    (p_recent, c_recent), (p_earlier, c_earlier) = recent, earlier
    min_gain, tolerance = rule.min_gain, rule.forgetting_tolerance
    if c_recent.accuracy is None or p_recent.accuracy is None:
        return False, "no recent held-out samples to judge the child on"
    needed = p_recent.accuracy + min_gain
    if c_recent.accuracy < needed - 1e-9:
        return False, (
            f"recent accuracy {c_recent.accuracy:.3f} does not beat the parent's "
            f"{p_recent.accuracy:.3f} by {min_gain:.3f}"
        )
    if c_earlier.accuracy is not None and p_earlier.accuracy is not None:
        floor = p_earlier.accuracy - tolerance
        if c_earlier.accuracy < floor - 1e-9:
            return False, (
                f"forgets earlier data: accuracy {c_earlier.accuracy:.3f} vs the parent's "
                f"{p_earlier.accuracy:.3f} (tolerance {tolerance:.3f})"
            )
        kept = f"earlier {p_earlier.accuracy:.3f} -> {c_earlier.accuracy:.3f}"
    else:
        kept = "no earlier data to check forgetting on"
    return True, f"recent accuracy {p_recent.accuracy:.3f} -> {c_recent.accuracy:.3f}; {kept}"
