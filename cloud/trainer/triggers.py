"""When to train: enough new labels, a timer, or drift in the served metric (and,
while a drift's concept is young, fewer new labels).

The drift signal watches the feedback itself: each event carries what the edge
served (the ``predicted`` class, or a regressor's ``predicted_outputs``), so the
score of each served answer against its truth is the fleet's live metric
(``validation.FeedbackValidator``: 1/0 for a right/wrong class, the |error| of
the outputs). A running level (EWMA of scores that have left the window) is
compared with the last ``window`` scores: accuracy more than ``drop`` below
the level, or a served MAE more than ``rise`` (a share of the level) above it,
is drift, and starts a round at once instead of waiting for the count or the
timer. A classifier's drop must also exceed ``noise_z`` standard errors of the
difference between the window's accuracy and the level: on a noisy stream the
window wobbles further than ``drop`` by chance alone.

>>> d = DriftDetector(window=10, drop=0.3, alpha=0.1)
>>> d.update(np.ones(30))
False
>>> d.update(np.zeros(10))
True
>>> r = DriftDetector(window=10, drop=0.3, alpha=0.1, task=TaskSpec.regression(["t"]), rise=1.0)
>>> r.update(np.full(30, 0.5)), r.update(np.full(10, 1.5)), r.last_signal["metric"]
(False, True, 'mae')
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from shared.task import TaskSpec

logger = logging.getLogger(__name__)

_CLASSES = TaskSpec.classification(["0", "1"])


class DriftDetector:
    """The served metric, recent window vs running level."""

    def __init__(
        self,
        window: int,
        drop: float,
        alpha: float,
        task: TaskSpec = _CLASSES,
        rise: float = 1.0,
        *,
        noise_z: float = 0.0,
    ) -> None:
        self.window = window
        self.drop = drop
        self.noise_z = noise_z
        self.rise = rise
        self.alpha = alpha
        self.task = task
        self.level: float | None = None
        #: The numbers behind the last signal (for the version's explanation).
        self.last_signal: dict[str, float | str] | None = None
        self._recent: deque[float] = deque()
        self._sum = 0.0

    @property
    def recent_value(self) -> float | None:
        """The served metric over the window (accuracy or MAE)."""
        return self._sum / len(self._recent) if self._recent else None

    def update(self, served: npt.NDArray[np.float64]) -> bool:
        """Add served scores (1/0 right/wrong, or |error|; nan = unknown, skipped); True
        when drift shows."""
        signal = False
        for score in served.tolist():
            if math.isnan(score):
                continue
            self._recent.append(score)
            self._sum += score
            if len(self._recent) > self.window:
                old = self._recent.popleft()
                self._sum -= old
                if self.level is None:
                    # the first full window's mean: one score as the start would make
                    # the level 1.0 (or 0.0) for the next ~1/alpha scores, and a served
                    # accuracy of 0.76 "drift" at once
                    self.level = (self._sum + old) / (len(self._recent) + 1)
                else:
                    self.level += self.alpha * (old - self.level)
            signal = self._check() or signal
        return signal

    def _check(self) -> bool:
        if self.level is None or len(self._recent) < self.window:
            return False
        value = self._sum / len(self._recent)
        if self.task.is_classification:
            # Checked after every score, a window of 40 served at 0.76 falls 0.2 below
            # the level by chance several times in 6 000 scores. Window and level are
            # both estimates: they differ by chance with a variance of p (1 - p)
            # (1 / window + alpha / (2 - alpha)), the second term the EWMA's. At 0.97,
            # 4 standard errors of that are 0.13 and ``drop`` decides; at 0.76, 0.32.
            spread = 1.0 / self.window + self.alpha / (2.0 - self.alpha)
            noise = self.noise_z * math.sqrt(self.level * (1.0 - self.level) * spread)
            if value >= self.level - max(self.drop, noise):
                return False
            logger.warning("drift: served accuracy %.2f, running level %.2f", value, self.level)
            self.last_signal = {
                "served_accuracy": round(value, 4),
                "level": round(self.level, 4),
                "drop": self.drop,
                "window": self.window,
            }
        else:
            if value <= self.level * (1.0 + self.rise) + 1e-12:
                return False
            logger.warning("drift: served MAE %.4g, running level %.4g", value, self.level)
            self.last_signal = {
                "metric": self.task.metric,
                "served_value": round(value, 6),
                "level": round(self.level, 6),
                "rise": self.rise,
                "window": self.window,
            }
        # Start over from the new level, so that one drift is one signal.
        self.level = value
        self._recent.clear()
        self._sum = 0.0
        return True


class RoundTrigger:
    """Counts new samples and says which trigger, if any, is due.

    After a drift signal the labels since it are a new concept, and a round on too few
    of them learns nothing (cloud/data/concept.py needs ``concept_samples`` of them):
    the drift round waits until that many samples have been accepted since the signal.
    While the concept is young (fewer than ``young_span`` samples since the signal) a
    round is due every ``young_samples`` new samples instead of every ``min_samples``:
    the served version is furthest from the world then, and each round closes more of
    the gap than a quiet one. 0 for all three: the drift round at once and no young
    concept (a regressor's, or with the concept's data handling off).
    """

    def __init__(
        self,
        min_samples: int,
        interval_s: float,
        interval_min_samples: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        concept_samples: int = 0,
        young_samples: int = 0,
        young_span: int = 0,
    ) -> None:
        self.min_samples = min_samples
        self.interval_s = interval_s
        self.interval_min_samples = interval_min_samples
        self.clock = clock
        self.concept_samples = concept_samples
        self.young_samples = young_samples
        self.young_span = young_span
        self.pending = 0
        self.drift = False
        #: Samples accepted since the latest drift signal while its concept is young.
        self.since_drift: int | None = None
        self._last = clock()

    def observe(self, new_samples: int, drift: bool = False) -> None:
        self.pending += new_samples
        self.drift = self.drift or drift
        if drift and self.since_drift is None and self.young_span:
            self.since_drift = 0  # a signal while the concept is young is the same drift
        if self.since_drift is not None:
            self.since_drift += new_samples
            if self.since_drift >= self.young_span:
                self.since_drift = None

    @property
    def young(self) -> bool:
        """A drift's concept is young: rounds come every ``young_samples``."""
        return self.since_drift is not None and self.young_samples > 0

    def due(self) -> str | None:
        """ "drift", "concept", "count", "timer" or None."""
        if self.drift and self.pending > 0:
            ready = self.since_drift is None or self.since_drift >= self.concept_samples
            return "drift" if ready else None
        if self.young and self.pending >= self.young_samples:
            return "concept"
        if self.pending >= self.min_samples:
            return "count"
        if (
            self.pending >= self.interval_min_samples
            and self.clock() - self._last >= self.interval_s
        ):
            return "timer"
        return None

    def started(self) -> int:
        """A round starts now: reset, and return the samples it covers."""
        n, self.pending, self.drift, self._last = self.pending, 0, False, self.clock()
        return n
