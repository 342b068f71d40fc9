"""Two artifacts on the same labeled data: metrics side by side and the predictions that flipped.

Both the explanation of a new version (``cloud.evaluation.explain``) and ``edgeloop diff``
(through the REST API) compare versions with these functions, on the int8 files
run in the edge runtime. Nothing here imports torch.

The evaluation data are two named sets (``EVAL_SETS``): ``earlier`` (the holdout
reservoir, held-out samples from all time) and ``recent`` (the recent window).
Flipped samples are named by ``sample_id``, a hash of the sample's stored
bytes, so the same sample has the same id in every explanation and diff.

>>> proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], np.float32)
>>> expected_calibration_error(proba, np.array([0, 1, 1]))
0.3
>>> sample_id(np.zeros(2, np.float32), 1)
'ca888f40c3ca'
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.data.replay import encode_sample
from cloud.evaluation.gate import Metrics, Samples
from shared.messages import FlipCounts, Flips, ModelMetrics, SetMetrics
from shared.runtime import TFLiteModel

EVAL_SETS = ("earlier", "recent")
#: Equal-width confidence bins of the expected calibration error (shared.messages.ECE_BINNING).
ECE_BINS = 15
#: Example ids listed per kind of flip.
FLIP_EXAMPLES = 8

Proba = npt.NDArray[np.float32]


def sample_id(x: npt.NDArray[np.float32], label: int) -> str:
    """A short, stable id of a labeled sample: a hash of its stored bytes."""
    return hashlib.sha256(encode_sample(x, int(label))).hexdigest()[:12]


def expected_calibration_error(proba: Proba, y: npt.NDArray[Any]) -> float | None:
    """Top-label ECE over ``ECE_BINS`` equal-width confidence bins, weighted by bin size."""
    if len(y) == 0:
        return None
    conf = proba.max(axis=1).astype(np.float64)
    hit = (proba.argmax(axis=1) == y).astype(np.float64)
    bins = np.minimum((conf * ECE_BINS).astype(int), ECE_BINS - 1)
    total = 0.0
    for b in np.unique(bins):
        inside = bins == b
        total += inside.sum() * abs(hit[inside].mean() - conf[inside].mean())
    return round(float(total / len(y)), 4)


def set_metrics(proba: Proba, y: npt.NDArray[Any], labels: list[str]) -> SetMetrics:
    """Accuracy, per-class recall and ECE of one model's probabilities on one set."""
    m = Metrics.of(proba.argmax(axis=1), y, labels) if len(y) else Metrics(None, 0)
    ece = expected_calibration_error(proba, y)
    return SetMetrics(samples=m.samples, accuracy=m.accuracy, recall=m.recall, ece=ece)


def predict_sets(artifact: TFLiteModel, sets: dict[str, Samples]) -> dict[str, Proba]:
    """The artifact's probabilities on every set, in the edge runtime."""
    return {name: artifact.predict_proba_batch(X) for name, (X, _) in sets.items()}


def model_metrics(
    proba: dict[str, Proba], sets: dict[str, Samples], labels: list[str]
) -> ModelMetrics:
    return ModelMetrics(
        **{name: set_metrics(proba[name], sets[name][1], labels) for name in EVAL_SETS}
    )


def older_than_recent(sets: dict[str, Samples]) -> npt.NDArray[np.bool_]:
    """Which ``earlier`` samples are not in the ``recent`` window (every held-out sample
    enters both, so "earlier" alone also holds the newest data)."""
    recent = {sample_id(x, int(c)) for x, c in zip(*sets["recent"], strict=True)}
    X, y = sets["earlier"]
    return np.array([sample_id(X[i], int(y[i])) not in recent for i in range(len(y))], bool)


def accuracy(proba: Proba, y: npt.NDArray[Any], mask: npt.NDArray[np.bool_]) -> float | None:
    """Accuracy on the rows ``mask`` selects (None when it selects none)."""
    if not mask.any():
        return None
    return round(float(np.mean(proba[mask].argmax(axis=1) == y[mask])), 4)


def flips(
    sets: dict[str, Samples],
    before: dict[str, Proba],
    after: dict[str, Proba],
    examples: int = FLIP_EXAMPLES,
) -> Flips:
    """Fixed (before wrong, after right) and broken (the reverse), per set and over the
    union of the sets by sample id: a held-out sample is often in both."""
    outcome: dict[str, tuple[bool, bool]] = {}
    by_set = {}
    for name in ("recent", "earlier"):  # recent first: its examples are the ones to show
        X, y = sets[name]
        was = before[name].argmax(axis=1) == y
        now = after[name].argmax(axis=1) == y
        by_set[name] = FlipCounts(
            compared=len(y), fixed=int(np.sum(now & ~was)), broken=int(np.sum(was & ~now))
        )
        for i in range(len(y)):
            outcome.setdefault(sample_id(X[i], int(y[i])), (bool(was[i]), bool(now[i])))
    fixed = [sid for sid, (was, now) in outcome.items() if now and not was]
    broken = [sid for sid, (was, now) in outcome.items() if was and not now]
    return Flips(
        compared=len(outcome),
        fixed=len(fixed),
        broken=len(broken),
        fixed_ids=fixed[:examples],
        broken_ids=broken[:examples],
        by_set={name: by_set[name] for name in EVAL_SETS},
    )
