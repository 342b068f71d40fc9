"""When to train: enough new labels, a timer, or drift in the served accuracy.

The drift signal watches the feedback itself: each event carries the label the
edge ``predicted``, so the share of correct served predictions is the fleet's
live accuracy. A running level (EWMA of outcomes that have left the window)
is compared with the last ``window`` outcomes; a drop of more than ``drop``
below the level is drift, and starts a round at once instead of waiting for
the count or the timer.

>>> d = DriftDetector(window=10, drop=0.3, alpha=0.1)
>>> d.update(np.ones(30, int), np.ones(30, int))
False
>>> d.update(np.zeros(10, int), np.ones(10, int))
True
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)


class DriftDetector:
    """Served accuracy, recent window vs running level."""

    def __init__(self, window: int, drop: float, alpha: float) -> None:
        self.window = window
        self.drop = drop
        self.alpha = alpha
        self.level: float | None = None
        #: The numbers behind the last signal (for the version's explanation).
        self.last_signal: dict[str, float] | None = None
        self._recent: deque[bool] = deque()
        self._hits = 0

    @property
    def recent_accuracy(self) -> float | None:
        return self._hits / len(self._recent) if self._recent else None

    def update(self, predicted: npt.NDArray[np.int64], y: npt.NDArray[np.int64]) -> bool:
        """Add outcomes (``predicted`` -1 = unknown, skipped); True when drift shows."""
        signal = False
        for hit in (predicted == y)[predicted >= 0].tolist():
            self._recent.append(hit)
            self._hits += hit
            if len(self._recent) > self.window:
                old = self._recent.popleft()
                self._hits -= old
                self.level = (
                    float(old)
                    if self.level is None
                    else self.level + self.alpha * (old - self.level)
                )
            signal = self._check() or signal
        return signal

    def _check(self) -> bool:
        if self.level is None or len(self._recent) < self.window:
            return False
        acc = self._hits / len(self._recent)
        if acc >= self.level - self.drop:
            return False
        logger.warning("drift: served accuracy %.2f, running level %.2f", acc, self.level)
        self.last_signal = {
            "served_accuracy": round(acc, 4),
            "level": round(self.level, 4),
            "drop": self.drop,
            "window": self.window,
        }
        # Start over from the new level, so that one drift is one signal.
        self.level = acc
        self._recent.clear()
        self._hits = 0
        return True


class RoundTrigger:
    """Counts new samples and says which trigger, if any, is due."""

    def __init__(
        self,
        min_samples: int,
        interval_s: float,
        interval_min_samples: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_samples = min_samples
        self.interval_s = interval_s
        self.interval_min_samples = interval_min_samples
        self.clock = clock
        self.pending = 0
        self.drift = False
        self._last = clock()

    def observe(self, new_samples: int, drift: bool = False) -> None:
        self.pending += new_samples
        self.drift = self.drift or drift

    def due(self) -> str | None:
        """ "drift", "count", "timer" or None."""
        if self.drift and self.pending > 0:
            return "drift"
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
