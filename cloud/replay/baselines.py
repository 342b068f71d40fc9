"""River's online learners on the replay's rows: the obvious alternative to edgeloop.

Each baseline is River's learner behind a ``StandardScaler``, run prequentially on
the same rows in the same order as the edges: it learns the seed rows first, then
predicts each streamed row before it learns anything about it, and learns a
row's label at the same point of the stream as the trainer gets it (after
``label_delay`` further rows, for the same share of rows: ``cloud.replay.plan``).
River is imported here only, when a replay runs (it is in the dev extra).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.replay.plan import Plan
from cloud.replay.streams import Stream
from shared.errors import ConfigError

BASELINES = ("arf", "hoeffding_adaptive_tree", "knn", "logistic_regression")
#: kNN's sliding window of the latest labeled rows.
KNN_WINDOW = 1000


@dataclass
class BaselineRun:
    name: str
    correct: npt.NDArray[np.bool_]  # [streamed]
    labels_learned: int
    seconds: float
    probe_accuracy: float | None = None  # on rows asked again at the end, not learnt


def require_river() -> None:
    """``ConfigError`` now, before a fleet is started, when River is not installed."""
    try:
        import river  # noqa: F401
    except ImportError as e:
        raise ConfigError("the baselines need River: pip install river (the dev extra)") from e


def learners(classes: int, seed: int) -> dict[str, Callable[[], Any]]:
    """Fresh pipelines by name (``ConfigError`` when River is not installed)."""
    try:
        from river import forest, linear_model, multiclass, neighbors, preprocessing, tree
    except ImportError as e:
        raise ConfigError("the baselines need River: pip install river (the dev extra)") from e

    def scaled(model: Any) -> Any:
        return preprocessing.StandardScaler() | model

    def logistic() -> Any:
        if classes <= 2:
            return linear_model.LogisticRegression()
        return multiclass.OneVsRestClassifier(linear_model.LogisticRegression())

    return {
        "arf": lambda: scaled(forest.ARFClassifier(seed=seed)),
        "hoeffding_adaptive_tree": lambda: scaled(tree.HoeffdingAdaptiveTreeClassifier(seed=seed)),
        "knn": lambda: scaled(
            neighbors.KNNClassifier(engine=neighbors.LazySearch(window_size=KNN_WINDOW))
        ),
        "logistic_regression": lambda: scaled(logistic()),
    }


def run_baseline(
    name: str, model: Any, stream: Stream, plan: Plan, probe: npt.NDArray[np.intp] | None = None
) -> BaselineRun:
    """Prequential test-then-train of ``model`` on ``stream`` as ``plan`` says; then its
    accuracy on the rows ``probe`` (the replay's forgetting rows), learning nothing."""
    started = time.perf_counter()
    rows = [dict(enumerate(map(float, x))) for x in stream.X]
    y = stream.y.tolist()
    for i in range(plan.seed_rows):
        model.learn_one(rows[i], y[i])
    correct = np.zeros(plan.streamed, bool)
    learned = 0
    for s in range(plan.streamed):
        i = plan.seed_rows + s
        correct[s] = model.predict_one(rows[i]) == y[i]
        j = plan.label_sent_after(i)
        if j is not None:
            model.learn_one(rows[j], y[j])
            learned += 1
    seconds = time.perf_counter() - started
    probed = None
    if probe is not None and len(probe):
        probed = round(float(np.mean([model.predict_one(rows[i]) == y[i] for i in probe])), 4)
    return BaselineRun(name, correct, learned, seconds, probed)


def run_baselines(
    stream: Stream, plan: Plan, seed: int, probe: npt.NDArray[np.intp] | None = None
) -> list[BaselineRun]:
    return [
        run_baseline(name, make(), stream, plan, probe)
        for name, make in learners(len(stream.labels), seed).items()
    ]
