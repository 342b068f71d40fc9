"""Each accepted label checked against the trainer's current model, counted per device.

The model is the latest published version's int8 file, run in the edge runtime
(its own interpreter: the round thread's artifacts are not shared). A
classifier's label disagrees when the model's class differs; a regressor's
targets disagree when the model's mean absolute error on the sample exceeds
``error_factor`` times the version's MAE on the trusted seed holdout (the
samples of the holdout reservoir that came from no device). What is "beyond
chance" is then decided per device against the rest of the fleet
(cloud/data/quarantine.py): the threshold only turns an error into a yes/no.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from cloud.data.ingest import Accepted
from cloud.data.replay import TrainerData
from cloud.export.artifact import Artifact
from cloud.registry.publisher import Publisher

logger = logging.getLogger(__name__)


class LabelCheck:
    """(checked, disagreed) per device for accepted samples, against the latest version."""

    def __init__(
        self, publisher: Publisher, data: TrainerData, model: str, error_factor: float = 3.0
    ) -> None:
        self.publisher = publisher
        self.data = data
        self.model = model
        self.task = data.task
        self.error_factor = error_factor
        self._sha: str | None = None
        self._artifact: Artifact | None = None
        self._scale = 0.0

    def _current(self) -> Artifact | None:
        latest = self.publisher.latest(self.model)
        if latest is None:
            return None
        _, sha, _ = latest
        if sha != self._sha or self._artifact is None:
            self._artifact = Artifact(self.publisher.content(sha))
            self._sha = sha
            if not self.task.is_classification:
                self._scale = self._trusted_mae(self._artifact)
        return self._artifact

    def _trusted_mae(self, artifact: Artifact) -> float:
        """The version's MAE on the holdout samples that came from no device."""
        (X, y), devices = self.data.tagged_holdout_set()
        seed = [i for i, d in enumerate(devices) if d is None]
        if not seed:
            return 0.0
        answers = artifact.answers(X[seed])
        return float(np.abs(answers - np.asarray(y, np.float32)[seed]).mean())

    def check(self, accepted: Accepted) -> dict[str, tuple[int, int]]:
        """Samples checked and disagreeing, per device (nothing before version 1)."""
        if not len(accepted) or len(accepted.devices) != len(accepted):
            return {}
        artifact = self._current()
        if artifact is None:
            return {}
        answers = artifact.answers(accepted.X)
        if self.task.is_classification:
            wrong = answers.argmax(axis=1) != np.asarray(accepted.y)
        else:
            if self._scale <= 0:
                return {}
            err = np.abs(answers - np.asarray(accepted.y, np.float32)).mean(axis=1)
            wrong = err > self.error_factor * self._scale
        out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for device, w in zip(accepted.devices, wrong.tolist(), strict=True):
            out[device][0] += 1
            out[device][1] += int(w)
        return {d: (n, k) for d, (n, k) in out.items()}
