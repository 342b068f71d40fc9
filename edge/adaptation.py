"""Adaptation on the edge: a small online learner that answers instead of the served
model only while it is measurably better (ARCHITECTURE.md, "Adaptation on the edge").

Between cloud versions an edge serves a model that has not seen the newest labels.
``Adapter`` learns each label the device receives (test-then-train: it first
predicts the sample, then learns it) with a k-nearest-neighbours vote over a
sliding window of the device's most recent labelled samples, and compares its
answer with the served model's on every one of them. Over the last ``compare``
labels since the current version was installed it counts b = adapter right and
model wrong, c = model right and adapter wrong; it answers the requests only while
b > c with a one-sided sign test p <= ``alpha``, and stops as soon as that no longer
holds. A new version (hot swap, revert) starts a fresh comparison: the chain drops
the adapter from its plan at once, and the comparison restarts on the first label
that the adapter learns under the new version.

Invariants: the chain answers with the adapter only for the version the comparison
was made against (``ServingChain.adapt`` refuses any other); fallback answers are
never replaced; the served model's own answer is what feedback reports and what
the swap guard judges.

>>> a = KnnWindow(num_classes=2, window=8, k=3)
>>> for v, y in [(0.0, 0), (0.1, 0), (0.2, 0), (5.0, 1), (5.1, 1), (5.2, 1)]:
...     a.learn_one(np.array([v], np.float32), y)
>>> a.predict_one(np.array([4.9], np.float32))
[0.0, 1.0]
>>> round(sign_test_p(9, 1), 4)
0.0107
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from math import comb
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Float64s = npt.NDArray[np.float64]

#: ``adaptation = "auto"`` adapts classifiers whose input has at most this many values:
#: the kNN's cost grows with the input, and its distances mean little on images.
AUTO_MAX_VALUES = 64

Mode = Literal["auto", "off", "knn"]


def sign_test_p(b: int, c: int) -> float:
    """One-sided sign test: the chance of ``b`` or more wins in ``b + c`` fair coin
    tosses (the discordant pairs, under "adapter and model are equally good")."""
    n = b + c
    if n == 0:
        return 1.0
    return sum(comb(n, i) for i in range(b, n + 1)) / 2.0**n


class KnnWindow:
    """A k-nearest-neighbours vote over the last ``window`` labelled samples.

    Samples are flattened and standardised by the window's own mean and standard
    deviation, in float64 (a float32 input near its largest value overflows a
    float32 variance); among equally near neighbours the newest win (a stable sort over
    the window ordered newest first), so a stream whose inputs repeat follows its
    newest labels. The answer is the neighbours' vote shares per class.

    ``learn_one`` and the predicts may run on different threads: a learn publishes
    one immutable snapshot (standardised window, labels, mean, scale) by a single
    reference assignment, and a predict reads that reference once.
    """

    def __init__(self, num_classes: int, window: int = 300, k: int = 5) -> None:
        self.num_classes = num_classes
        self.window = window
        self.k = k
        self._x: deque[npt.NDArray[np.float64]] = deque(maxlen=window)
        self._y: deque[int] = deque(maxlen=window)
        self._eye = np.eye(num_classes, dtype=np.float32)
        self._snapshot: tuple[Float64s, npt.NDArray[np.intp], Float64s, Float64s] | None = None

    def __len__(self) -> int:
        return len(self._y)

    def learn_one(self, x: npt.NDArray[Any], y: int) -> None:
        self._x.append(np.asarray(x, np.float64).reshape(-1))
        self._y.append(int(y))
        xs = np.stack(list(reversed(self._x)))  # newest first
        mean = xs.mean(axis=0)
        scale = xs.std(axis=0)
        scale[scale == 0] = 1.0
        ys = np.fromiter(reversed(self._y), np.intp, len(self._y))
        self._snapshot = ((xs - mean) / scale, ys, mean, scale)

    def predict_one(self, x: npt.NDArray[Any]) -> list[float] | None:
        """The vote shares for one sample, or None while the window holds fewer than k."""
        snap = self._snapshot
        if snap is None or len(snap[1]) < self.k:
            return None
        z, ys, mean, scale = snap
        q = (np.asarray(x, np.float64).reshape(-1) - mean) / scale
        d = np.square(z - q).sum(axis=1)
        nearest = ys[np.argsort(d, kind="stable")[: self.k]]
        shares: list[float] = (np.bincount(nearest, minlength=self.num_classes) / self.k).tolist()
        return shares

    def predict_many(self, xs: npt.NDArray[Any]) -> FloatArray | None:
        """The vote shares ``[N, classes]`` for a batch, or None (see predict_one)."""
        snap = self._snapshot
        if snap is None or len(snap[1]) < self.k:
            return None
        z, ys, mean, scale = snap
        q = (np.asarray(xs, np.float64).reshape(len(xs), -1) - mean) / scale
        d = np.square(q[:, None, :] - z[None, :, :]).sum(axis=2)
        nearest = ys[np.argsort(d, axis=1, kind="stable")[:, : self.k]]
        shares: FloatArray = self._eye[nearest].sum(axis=1) / self.k
        return shares


class Adapter:
    """The kNN and its guard: learns labels, compares itself with the served model,
    and tells the chain when to answer (``on_switch(active, sha256)``).

    ``learn`` runs on feedback threads (serialised by a lock); ``answer`` and
    ``answer_many`` on request threads, lock-free but for their counter.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        window: int = 300,
        k: int = 5,
        compare: int = 200,
        alpha: float = 0.01,
        on_switch: Callable[[bool, str], bool] | None = None,
    ) -> None:
        self.knn = KnnWindow(num_classes, window, k)
        self.alpha = alpha
        #: Called to start (True) or stop answering for the version sha256; returns
        #: whether the chain took it (a swap meanwhile refuses a start).
        self.on_switch = on_switch
        self._lock = threading.Lock()
        # Per compared label: +1 adapter right & model wrong, -1 the reverse, 0 a tie.
        self._outcomes: deque[int] = deque(maxlen=compare)
        self._b = self._c = 0
        self._sha: str | None = None
        self.active = False
        self.labels = 0
        self.switches = 0
        self._answered = 0
        self._count_lock = threading.Lock()

    @property
    def answered(self) -> int:
        """Requests (samples of batches included) the adapter answered."""
        with self._count_lock:
            return self._answered

    @property
    def comparison(self) -> tuple[int, int]:
        """(b, c) over the current comparison window."""
        with self._lock:
            return self._b, self._c

    # -- request threads ----------------------------------------------------

    def answer(self, x: npt.NDArray[Any]) -> list[float] | None:
        shares = self.knn.predict_one(x)
        if shares is not None:
            with self._count_lock:
                self._answered += 1
        return shares

    def answer_many(self, xs: npt.NDArray[Any]) -> FloatArray | None:
        shares = self.knn.predict_many(xs)
        if shares is not None:
            with self._count_lock:
                self._answered += len(xs)
        return shares

    # -- feedback threads ---------------------------------------------------

    def learn(self, x: npt.NDArray[Any], y: int, model_label: int | None, sha256: str) -> None:
        """Test-then-train on one label: compare the adapter's answer for ``x`` (before
        learning it) with ``model_label``, the answer of the version ``sha256`` that
        serves now (None: not compared), then learn (x, y), then switch if the
        comparison says so."""
        with self._lock:
            if sha256 != self._sha:
                self._reset(sha256)
            shares = self.knn.predict_one(x)
            if shares is not None and model_label is not None:
                mine = int(np.argmax(shares))
                outcome = int(mine == y) - int(model_label == y)
                if len(self._outcomes) == self._outcomes.maxlen:
                    self._drop(self._outcomes[0])
                self._outcomes.append(outcome)
                self._b += outcome == 1
                self._c += outcome == -1
            self.knn.learn_one(x, y)
            self.labels += 1
            better = self._b > self._c and sign_test_p(self._b, self._c) <= self.alpha
            if better != self.active:
                self._switch(better, sha256)

    def reset(self) -> None:
        """Forget the comparison (not the samples): the next label starts a new one."""
        with self._lock:
            self._sha = None
            self.active = False

    def _reset(self, sha256: str) -> None:
        self._outcomes.clear()
        self._b = self._c = 0
        self._sha = sha256
        self.active = False  # the chain dropped the adapter when the version changed

    def _drop(self, outcome: int) -> None:
        self._b -= outcome == 1
        self._c -= outcome == -1

    def _switch(self, on: bool, sha256: str) -> None:
        taken = self.on_switch(on, sha256) if self.on_switch is not None else True
        if taken:
            self.active = on
            self.switches += 1


def wanted(mode: Mode, classifies: bool | None, input_values: int) -> bool:
    """Whether a model gets an adapter: ``knn`` any classifier, ``auto`` a classifier
    whose input has at most AUTO_MAX_VALUES values, ``off`` none (nor regressors)."""
    if mode == "off" or not classifies:
        return False
    return mode == "knn" or input_values <= AUTO_MAX_VALUES
