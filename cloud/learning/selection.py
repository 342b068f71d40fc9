"""The weight decay a model is trained with, chosen by k-fold cross-validation on the
seed data (ARCHITECTURE.md, "Learning fast enough").

How much a few hundred tabular rows should pull the weights towards zero depends
on the data: a 30-feature CSV of 200 rows is learnt by heart without it, while
a two-feature stream with curved class borders needs every unit free. Each
choice trains ``folds`` fresh models on the other folds, exactly as the
bootstrap would (same epochs, rate, batch, seed), and is scored by the task's
metric on the fold it did not see. The best mean wins; a tie goes to the
larger decay, the simpler model that the folds cannot tell from the others (on
a 160-row CSV, 0, 0.01 and 0.1 tie, and 0.1 is 4 points better on the rows
after). Row ``i`` falls in fold ``i % folds``, so each fold spans the whole
seed data in its order.

>>> from cloud.data.datasets import load_dataset, split
>>> from cloud.learning.contract import DataInfo, build_model
>>> seed = split(load_dataset("digits"), seed=0).seed_train
>>> hp = Hyperparameters(epochs=1, batch_size=64, lr=1e-3, seed=0)
>>> fresh = lambda: build_model("digits", DataInfo.of(seed), seed=0)
>>> choice = choose_weight_decay(fresh, seed.X[:60], seed.y[:60], hp, [0.0])
>>> choice.value, list(choice.scores)  # one choice: nothing to score
(0.0, [])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.learning.models import TaskModel, predict
from cloud.learning.training import Hyperparameters, train

#: Folds of the cross-validation.
FOLDS = 5


@dataclass(frozen=True)
class WeightDecayChoice:
    value: float
    scores: dict[float, float]  # each choice's mean metric on the folds it did not see
    metric: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "weight_decay": self.value,
            "metric": self.metric,
            "cross_validated": {str(k): round(v, 4) for k, v in self.scores.items()},
        }


def choose_weight_decay(
    fresh: Callable[[], TaskModel],
    X: npt.NDArray[Any],
    y: npt.NDArray[Any],
    hp: Hyperparameters,
    choices: Sequence[float],
    folds: int = FOLDS,
) -> WeightDecayChoice:
    """The choice whose models, trained by ``hp`` on all folds but one, score best on
    that one (mean over the folds), the larger of a tie; ``choices`` must not be empty.
    With fewer than two samples a fold, the smallest choice, unscored."""
    ordered = sorted(set(float(c) for c in choices))
    if not ordered:
        raise ValueError("no weight decay to choose from")
    task = fresh().task
    if len(y) < 2 * folds or len(ordered) == 1:
        return WeightDecayChoice(ordered[0], {}, task.metric)
    fold = np.arange(len(y)) % folds
    scores: dict[float, float] = {}
    for decay in ordered:
        per_fold = []
        for f in range(folds):
            seen, unseen = fold != f, fold == f
            model = train(fresh(), X[seen], y[seen], replace(hp, weight_decay=decay)).model
            per_fold.append(task.score(predict(model, X[unseen]), y[unseen]))
        scores[decay] = float(np.mean(per_fold))
    best = ordered[-1]
    for decay in reversed(ordered[:-1]):  # a tie keeps the larger decay
        if task.gain(scores[decay], scores[best]) > 0:
            best = decay
    return WeightDecayChoice(best, scores, task.metric)
