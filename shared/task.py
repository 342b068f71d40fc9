"""What a model predicts, and the one metric every part judges it by.

A model is a **classifier** (``labels`` name its classes; it answers with class
probabilities, and is judged by accuracy, higher is better) or a **regressor**
(``outputs`` name its k outputs; it answers with k numbers, and is judged by the
mean absolute error over the outputs, lower is better). The gate, the drift
trigger, the explanations, the rollout gates, the edges' rolling figure and the
demo all use ``TaskSpec.score`` and ``TaskSpec.better``, so they can never
disagree about what "better" means.

>>> clf = TaskSpec.classification(["cat", "dog"])
>>> clf.metric, clf.lower_is_better, clf.score([[0.9, 0.1], [0.2, 0.8]], [0, 0])
('accuracy', False, 0.5)
>>> reg = TaskSpec.regression(["temp_c"])
>>> reg.metric, reg.score([[20.0], [22.0]], [[21.0], [22.0]])
('mae', 0.5)
>>> reg.better(0.4, than=0.5, by=0.05), clf.better(0.9, than=0.8, by=0.05)
(True, True)
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field, model_validator

Kind = Literal["classification", "regression"]


class TaskSpec(BaseModel):
    """What a model's outputs mean."""

    kind: Kind = "classification"
    labels: list[str] = Field(default_factory=list, description="class names (classification)")
    outputs: list[str] = Field(
        default_factory=list, description="output names (regression), one per output"
    )

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if self.kind == "classification" and len(self.labels) < 2:
            raise ValueError("a classification task needs at least two labels")
        if self.kind == "regression" and not self.outputs:
            raise ValueError("a regression task needs at least one output name")
        return self

    @classmethod
    def classification(cls, labels: list[str]) -> TaskSpec:
        return cls(kind="classification", labels=list(labels))

    @classmethod
    def regression(cls, outputs: list[str]) -> TaskSpec:
        return cls(kind="regression", outputs=list(outputs))

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    @property
    def width(self) -> int:
        """Numbers the model answers with: class probabilities or outputs."""
        return len(self.labels) if self.is_classification else len(self.outputs)

    @property
    def metric(self) -> str:
        return "accuracy" if self.is_classification else "mae"

    @property
    def lower_is_better(self) -> bool:
        return not self.is_classification

    def score(self, answers: npt.ArrayLike, truth: npt.ArrayLike) -> float:
        """The metric of ``answers`` (probabilities or outputs, ``[N, width]``) against
        ``truth`` (class indices ``[N]``, or targets ``[N, width]``); NaN for no samples."""
        a = np.asarray(answers, dtype=np.float64)
        if len(a) == 0:
            return float("nan")
        if self.is_classification:
            return float(np.mean(a.argmax(axis=1) == np.asarray(truth).reshape(-1)))
        t = np.asarray(truth, dtype=np.float64).reshape(a.shape)
        return float(np.mean(np.abs(a - t)))

    def sample_scores(self, answers: npt.ArrayLike, truth: npt.ArrayLike) -> npt.NDArray[Any]:
        """Per sample: 1.0/0.0 for a right/wrong class, or the absolute error (mean over outputs)."""
        a = np.asarray(answers, dtype=np.float64)
        if self.is_classification:
            right: npt.NDArray[np.float64] = a.argmax(axis=1) == np.asarray(truth).reshape(-1)
            return right.astype(np.float64)
        t = np.asarray(truth, dtype=np.float64).reshape(a.shape)
        errors: npt.NDArray[np.float64] = np.abs(a - t).reshape(len(a), -1).mean(axis=1)
        return errors

    def better(self, value: float, than: float, by: float = 0.0) -> bool:
        """True when ``value`` beats ``than`` by at least ``by`` (in the metric's direction)."""
        return value <= than - by if self.lower_is_better else value >= than + by

    def gain(self, value: float, over: float) -> float:
        """How much ``value`` improves on ``over``; negative when it is worse."""
        return over - value if self.lower_is_better else value - over
