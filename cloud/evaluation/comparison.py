"""Two artifacts on the same labeled data: metrics side by side and the predictions that flipped.

Both the explanation of a new version (``cloud.evaluation.explain``) and ``edgeloop diff``
(through the REST API) compare versions with these functions, on the int8 files
run in the edge runtime. Nothing here imports torch.

The evaluation data are two named sets (``EVAL_SETS``): ``earlier`` (the holdout
reservoir, held-out samples from all time) and ``recent`` (the recent window).
Changed samples are named by ``sample_id``, a hash of the sample's stored
bytes, so the same sample has the same id in every explanation and diff. For a
classifier a sample flips when its class turns right (fixed) or wrong (broken);
for a regressor, when its error shrinks or grows by more than a tolerance
(``FLIP_TOLERANCE`` of the targets' standard deviation).

>>> proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], np.float32)
>>> expected_calibration_error(proba, np.array([0, 1, 1]))
0.3
>>> sample_id(np.zeros(2, np.float32), 1)
'ca888f40c3ca'
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.evaluation.gate import Metrics, Samples
from cloud.export.artifact import Artifact
from shared.messages import TENSOR_SAMPLE_ID_SCHEME, FlipCounts, Flips, ModelMetrics, SetMetrics
from shared.task import TaskSpec
from shared.tensors import to_bytes

EVAL_SETS = ("earlier", "recent")
#: Equal-width confidence bins of the expected calibration error (shared.messages.ECE_BINNING).
ECE_BINS = 15
#: Example ids listed per kind of flip.
FLIP_EXAMPLES = 8
#: A regressor's sample counts as fixed or broken when its |error| changes by more than this
#: share of the targets' standard deviation.
FLIP_TOLERANCE = 0.1

Proba = npt.NDArray[np.float32]


def sample_id(x: npt.NDArray[Any], truth: Any) -> str:
    """A short, stable id of a labeled sample: a hash of its stored bytes (the truth,
    an int32 class or float32 targets, then the sample)."""
    t = np.asarray(truth)
    head = (
        struct.pack("<i", int(t))
        if t.ndim == 0 and t.dtype.kind in "iub"
        else t.astype("<f4").tobytes()
    )
    return hashlib.sha256(head + to_bytes(np.asarray(x))).hexdigest()[:12]


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


def set_metrics(answers: Proba, y: npt.NDArray[Any], task: TaskSpec) -> SetMetrics:
    """Accuracy, per-class recall and ECE of a classifier's probabilities on one set, or a
    regressor's MAE, RMSE and R²."""
    m = Metrics.of_answers(answers, y, task) if len(y) else Metrics(None, 0)
    if not task.is_classification:
        return SetMetrics(samples=m.samples, mae=m.mae, rmse=m.rmse, r2=m.r2)
    ece = expected_calibration_error(answers, y)
    return SetMetrics(samples=m.samples, accuracy=m.accuracy, recall=m.recall, ece=ece)


def predict_sets(artifact: Artifact, sets: dict[str, Samples]) -> dict[str, Proba]:
    """The artifact's answers (probabilities or outputs) on every set, in the edge runtime."""
    return {name: artifact.answers(X) for name, (X, _) in sets.items()}


def model_metrics(
    answers: dict[str, Proba], sets: dict[str, Samples], task: TaskSpec
) -> ModelMetrics:
    return ModelMetrics(
        **{name: set_metrics(answers[name], sets[name][1], task) for name in EVAL_SETS}
    )


def older_than_recent(sets: dict[str, Samples]) -> npt.NDArray[np.bool_]:
    """Which ``earlier`` samples are not in the ``recent`` window (every held-out sample
    enters both, so "earlier" alone also holds the newest data)."""
    recent = {sample_id(x, t) for x, t in zip(*sets["recent"], strict=True)}
    X, y = sets["earlier"]
    return np.array([sample_id(X[i], y[i]) not in recent for i in range(len(y))], bool)


def metric_on(
    answers: Proba, y: npt.NDArray[Any], mask: npt.NDArray[np.bool_], task: TaskSpec
) -> float | None:
    """The task's metric on the rows ``mask`` selects (None when it selects none)."""
    if not mask.any():
        return None
    return round(task.score(answers[mask], y[mask]), 4 if task.is_classification else 6)


def accuracy(proba: Proba, y: npt.NDArray[Any], mask: npt.NDArray[np.bool_]) -> float | None:
    """Accuracy on the rows ``mask`` selects (None when it selects none)."""
    if not mask.any():
        return None
    return round(float(np.mean(proba[mask].argmax(axis=1) == y[mask])), 4)


def flip_tolerance(sets: dict[str, Samples], task: TaskSpec) -> float | None:
    """The |error| change that makes a regressor's sample fixed or broken (None: classes)."""
    if task.is_classification:
        return None
    targets = [np.asarray(y, np.float64).reshape(len(y), -1) for _, y in sets.values() if len(y)]
    if not targets:
        return 0.0
    return round(FLIP_TOLERANCE * float(np.concatenate(targets).std()), 6)


def _outcomes(
    task: TaskSpec, y: npt.NDArray[Any], before: Proba, after: Proba, tolerance: float | None
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Per sample (was good, is good): right class; or, for a regressor, which side of a
    change of more than ``tolerance`` its error is on (fixed: shrank; broken: grew)."""
    if task.is_classification:
        return before.argmax(axis=1) == y, after.argmax(axis=1) == y
    was, now = task.sample_scores(before, y), task.sample_scores(after, y)
    shrank, grew = now < was - (tolerance or 0.0), now > was + (tolerance or 0.0)
    # fixed = now good & was not; broken = was good & now not; unchanged: both good
    return ~shrank, ~grew


def flips(
    sets: dict[str, Samples],
    before: dict[str, Proba],
    after: dict[str, Proba],
    task: TaskSpec,
    examples: int = FLIP_EXAMPLES,
) -> Flips:
    """Fixed (before wrong, after right) and broken (the reverse), per set and over the
    union of the sets by sample id: a held-out sample is often in both."""
    tolerance = flip_tolerance(sets, task)
    outcome: dict[str, tuple[bool, bool]] = {}
    by_set = {}
    for name in ("recent", "earlier"):  # recent first: its examples are the ones to show
        X, y = sets[name]
        was, now = _outcomes(task, y, before[name], after[name], tolerance)
        by_set[name] = FlipCounts(
            compared=len(y), fixed=int(np.sum(now & ~was)), broken=int(np.sum(was & ~now))
        )
        for i in range(len(y)):
            outcome.setdefault(sample_id(X[i], y[i]), (bool(was[i]), bool(now[i])))
    fixed = [sid for sid, (was, now) in outcome.items() if now and not was]
    broken = [sid for sid, (was, now) in outcome.items() if was and not now]
    out = Flips(
        compared=len(outcome),
        fixed=len(fixed),
        broken=len(broken),
        fixed_ids=fixed[:examples],
        broken_ids=broken[:examples],
        by_set={name: by_set[name] for name in EVAL_SETS},
        tolerance=tolerance,
    )
    first = next((X for X, _ in sets.values() if len(X)), None)
    if not task.is_classification or (first is not None and first.dtype != np.float32):
        out.id_scheme = TENSOR_SAMPLE_ID_SCHEME
    return out
