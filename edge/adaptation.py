"""Adaptation on the edge: a small online learner that answers instead of the served
model only while it is measurably better (ARCHITECTURE.md, "Adaptation on the edge").

Between cloud versions an edge serves a model that has not seen the newest labels.
``Adapter`` learns each label the device receives (test-then-train: it first
predicts the sample, then learns it) with several small learners — k-nearest-
neighbours votes over a sliding window of the device's most recent labelled
samples, an online linear regression, a tree refit on the newest samples — answers
with the one right most often lately, and compares that answer with the served
model's on every label. Over the last ``compare``
labels it counts b = adapter right and model wrong, c = model right and adapter
wrong, each label against the version that served when it arrived; it answers the
requests once b > c with a one-sided sign test p <= ``alpha``, and stops as soon
as b > c with p <= ``keep_alpha`` (the larger) no longer holds: at the threshold,
one label more or less does not switch it on and off. A new version (hot swap, revert) inherits the record:
the chain drops the adapter from its plan at once, the labels among the last
``compare`` that the trainers held out (shared/holdout.py: no version was trained on
them) are judged again with the new version's answers, and on the next label the
adapter offers itself again if it is still better. Only those labels are judged
again: the new version may have been trained on the others.

Invariants: the chain answers with the adapter only for the version the comparison
was made against (``ServingChain.adapt`` refuses any other); fallback answers are
never replaced; the served model's own answer is what feedback reports and what
the swap guard judges.

>>> a = KnnWindow(num_classes=2, window=8, ks=(3,))
>>> for v, y in [(0.0, 0), (0.1, 0), (0.2, 0), (5.0, 1), (5.1, 1), (5.2, 1)]:
...     a.learn_one(np.array([v], np.float32), y)
>>> a.predict_one(np.array([4.9], np.float32), k=3)
[0.0, 1.0]
>>> round(sign_test_p(9, 1), 4)
0.0107
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from math import comb
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

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
    """k-nearest-neighbours votes over the last ``window`` labelled samples, for each
    k of ``ks`` from one distance computation.

    Samples are flattened and standardised by the window's own mean and standard
    deviation, in float64 (a float32 input near its largest value overflows a
    float32 variance). Among equally near neighbours the newest win, so a stream
    whose inputs repeat follows its newest labels. An answer is the neighbours'
    vote shares per class.

    ``learn_one`` and the predicts may run on different threads: the samples live
    in a ring only ``learn_one`` touches, and each learn publishes one immutable
    snapshot (standardised samples newest first, labels, mean, scale) by a single
    reference assignment, which a predict reads once. A learn costs O(window x
    input values); a predict one matrix-vector product (the squared distance less
    the query's own norm, which ranks alike) and a partition, not a sort, of the window.
    """

    def __init__(
        self,
        num_classes: int,
        window: int = 1000,
        ks: Sequence[int] = (5,),
        spans: Sequence[int] = (),
    ) -> None:
        self.num_classes = num_classes
        self.window = window
        self.ks = tuple(ks)
        self._kmax = max(self.ks)
        #: Who votes: (span, k) — the k nearest among the ``span`` newest samples (None:
        #: the whole window), for each k of ``ks``, over the window and each shorter
        #: span of ``spans``.
        shorter = sorted({s for s in spans if self._kmax <= s < window}, reverse=True)
        self._spans: tuple[int | None, ...] = (None, *shorter)
        self.voters: tuple[Voter, ...] = tuple((span, k) for span in self._spans for k in self.ks)
        self._raw: Float64s | None = None  # the ring, [window, input values]
        self._ys = np.zeros(window, np.intp)
        self._seen = 0
        self._eye = np.eye(num_classes, dtype=np.float32)
        self._snapshot: _Snapshot | None = None

    def __len__(self) -> int:
        return min(self._seen, self.window)

    def learn_one(self, x: npt.NDArray[Any], y: int) -> None:
        self._put(np.asarray(x, np.float64).reshape(-1), y)
        self._publish()

    def learn_many(self, X: npt.NDArray[Any], y: npt.NDArray[Any]) -> None:
        """Learn the samples of ``X`` in order, as many learn_one calls would, with one
        snapshot at the end (an adapter's start from a version's exemplars)."""
        rows = np.asarray(X, np.float64).reshape(len(X), -1)
        for row, label in zip(rows[-self.window :], np.asarray(y)[-self.window :], strict=True):
            self._put(row, int(label))
        if len(rows):
            self._publish()

    def _put(self, row: Float64s, y: int) -> None:
        if self._raw is None or self._raw.shape[1] != row.size:
            self._raw, self._seen = np.zeros((self.window, row.size)), 0
        slot = self._seen % self.window
        self._raw[slot], self._ys[slot] = row, y
        self._seen += 1

    def _publish(self) -> None:
        if self._raw is None:
            return
        n = len(self)
        newest_first = ((self._seen - 1) - np.arange(n)) % self.window
        xs = self._raw[newest_first]
        mean = xs.mean(axis=0)
        scale = xs.std(axis=0)
        scale[scale == 0] = 1.0
        z = (xs - mean) / scale
        self._snapshot = (z, np.einsum("ij,ij->i", z, z), self._ys[newest_first], mean, scale)

    def newest(self, span: int | None = None) -> tuple[Float64s, npt.NDArray[np.intp]]:
        """The ``span`` newest samples (None: the window) as learnt, not standardised,
        newest first, and their labels. On the thread that learns."""
        n = len(self) if span is None else min(span, len(self))
        if self._raw is None or n == 0:
            return np.zeros((0, 0)), np.zeros(0, np.intp)
        rows = ((self._seen - 1) - np.arange(n)) % self.window
        return self._raw[rows], self._ys[rows]

    def predict_one(
        self, x: npt.NDArray[Any], k: int, span: int | None = None
    ) -> list[float] | None:
        """The vote shares of the ``k`` nearest among the ``span`` newest samples (None:
        the window) for one sample, or None while the window holds fewer than k."""
        snap = self._snapshot
        if snap is None or len(snap[2]) < k:
            return None
        z, zz, ys, mean, scale = _recent(snap, span)
        d = zz - 2.0 * (z @ ((np.asarray(x, np.float64).reshape(-1) - mean) / scale))
        shares: list[float] = (
            np.bincount(ys[_nearest(d, k)], minlength=self.num_classes) / k
        ).tolist()
        return shares

    def predict_each(self, x: npt.NDArray[Any]) -> list[list[float]] | None:
        """The vote shares for one sample of each of ``voters``, in order, from one
        distance computation; None while the window holds fewer than the largest k."""
        snap = self._snapshot
        if snap is None or len(snap[2]) < self._kmax:
            return None
        z, zz, ys, mean, scale = snap
        d = zz - 2.0 * (z @ ((np.asarray(x, np.float64).reshape(-1) - mean) / scale))
        votes: list[list[float]] = []
        for span in self._spans:  # in the order of ``voters``
            near = _nearest(d[:span], self._kmax)
            ordered = ys[near[np.lexsort((near, d[near]))]]  # nearest first, then newest
            votes += [
                (np.bincount(ordered[:k], minlength=self.num_classes) / k).tolist() for k in self.ks
            ]
        return votes

    def predict_many(
        self, xs: npt.NDArray[Any], k: int, span: int | None = None
    ) -> FloatArray | None:
        """The vote shares ``[N, classes]`` of the ``k`` nearest for a batch, or None
        (see predict_one)."""
        snap = self._snapshot
        if snap is None or len(snap[2]) < k:
            return None
        z, zz, ys, mean, scale = _recent(snap, span)
        q = (np.asarray(xs, np.float64).reshape(len(xs), -1) - mean) / scale
        # One matrix-vector product per sample: a [N, window] matrix product was 10x
        # slower on a loaded 2-core device (the BLAS's threads against the others).
        nearest = np.stack([ys[_nearest(zz - 2.0 * (z @ row), k)] for row in q])
        shares: FloatArray = self._eye[nearest].sum(axis=1) / k
        return shares


class OnlineLinear:
    """Softmax regression learnt online: one SGD step (``lr``) on the log loss per
    labelled sample, on inputs standardised by the running mean and variance of every
    sample learnt (Welford's), as River's ``StandardScaler | LogisticRegression`` does.

    Where the concept is linear — SEA, a rotating hyperplane — it is the learner a
    kNN is not: its answer uses every feature's weight, not distances that
    irrelevant features blur, and it follows an incremental drift one step a label.
    Threads as ``KnnWindow``: each learn publishes an immutable snapshot (weights,
    biases, mean, scale) by one reference assignment, which a predict reads once.
    A learn or a predict costs O(classes x input values).

    >>> m = OnlineLinear(num_classes=2, lr=0.5)
    >>> for _ in range(20):
    ...     for v, y in [(0.0, 0), (1.0, 1)]:
    ...         m.learn_one(np.array([v], np.float32), y)
    >>> [round(p) for p in m.predict_one(np.array([1.0], np.float32))]
    [0, 1]
    """

    def __init__(self, num_classes: int, lr: float = 0.01) -> None:
        self.num_classes = num_classes
        self.lr = lr
        self._n = 0
        self._w: Float64s | None = None  # [classes, input values]
        self._b = np.zeros(num_classes)
        self._mean: Float64s | None = None
        self._m2: Float64s | None = None
        self._snapshot: tuple[Float64s, Float64s, Float64s, Float64s] | None = None

    def learn_one(self, x: npt.NDArray[Any], y: int) -> None:
        self._step(np.asarray(x, np.float64).reshape(-1), y)
        self._publish()

    def learn_many(self, X: npt.NDArray[Any], y: npt.NDArray[Any]) -> None:
        """``learn_one`` on each sample in order, with one snapshot at the end."""
        rows = np.asarray(X, np.float64).reshape(len(X), -1)
        for row, label in zip(rows, np.asarray(y), strict=True):
            self._step(row, int(label))
        if len(rows):
            self._publish()

    def _step(self, x: Float64s, y: int) -> None:
        if self._w is None or self._w.shape[1] != x.size:
            self._w = np.zeros((self.num_classes, x.size))
            self._b = np.zeros(self.num_classes)
            self._mean, self._m2, self._n = np.zeros(x.size), np.zeros(x.size), 0
        assert self._mean is not None and self._m2 is not None
        # new arrays, never updated in place: a published snapshot holds them as they were
        self._n += 1
        delta = x - self._mean
        self._mean = self._mean + delta / self._n
        self._m2 = self._m2 + delta * (x - self._mean)
        z = (x - self._mean) / self._scale()
        grad = _softmax(self._w @ z + self._b)
        grad[y] -= 1.0
        self._w = self._w - self.lr * np.outer(grad, z)
        self._b = self._b - self.lr * grad

    def _scale(self) -> Float64s:
        assert self._m2 is not None
        scale = np.sqrt(self._m2 / self._n)
        scale[scale == 0] = 1.0
        return scale

    def _publish(self) -> None:
        if self._w is not None and self._mean is not None:
            self._snapshot = (self._w, self._b, self._mean, self._scale())

    def predict_one(self, x: npt.NDArray[Any]) -> list[float] | None:
        """The class probabilities for one sample, or None before the first label."""
        snap = self._snapshot
        if snap is None:
            return None
        w, b, mean, scale = snap
        shares: list[float] = _softmax(
            w @ ((np.asarray(x, np.float64).reshape(-1) - mean) / scale) + b
        ).tolist()
        return shares

    def predict_many(self, xs: npt.NDArray[Any]) -> FloatArray | None:
        """The class probabilities ``[N, classes]`` for a batch, or None (predict_one)."""
        snap = self._snapshot
        if snap is None:
            return None
        w, b, mean, scale = snap
        z = (np.asarray(xs, np.float64).reshape(len(xs), -1) - mean) / scale
        logits = z @ w.T + b
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return np.asarray(p / p.sum(axis=1, keepdims=True), np.float32)


def _softmax(logits: Float64s) -> Float64s:
    p = np.exp(logits - logits.max())
    return np.asarray(p / p.sum(), np.float64)


class WindowTree:
    """A classification tree (CART: Gini splits at midpoints, at most ``depth`` levels,
    at least ``min_leaf`` samples a leaf) refit on the ``span`` newest samples of a
    ``KnnWindow`` (None: all of it) every ``every`` labels.

    Where the concept is a few thresholds on a few features — Agrawal's functions,
    STAGGER's rules — a tree learns it from a few hundred labels, where a kNN's
    distances are blurred by the other features and a regression cannot draw it;
    refit on the newest samples alone it forgets an overwritten concept as fast as
    they turn over. A fit costs O(depth x input values x span log span), on the
    feedback thread; a predict walks at most ``depth`` nodes. The fitted tree is one
    immutable tuple published by a single reference assignment, as the kNN's
    snapshot is.

    >>> t = WindowTree(num_classes=2, span=None, min_leaf=1)
    >>> t.fit(np.array([[0.0, 5.0], [1.0, 3.0], [2.0, 5.0], [3.0, 3.0]]), np.array([0, 0, 1, 1]))
    >>> t.predict_one(np.array([2.5, 4.0], np.float32)), t.predict_one(np.array([0.2, 9.0]))
    ([0.0, 1.0], [1.0, 0.0])
    """

    def __init__(
        self,
        num_classes: int,
        span: int | None,
        *,
        depth: int = 10,
        min_leaf: int = 3,
        every: int = 25,
    ) -> None:
        self.num_classes = num_classes
        self.span = span
        self.depth = depth
        self.min_leaf = min_leaf
        self.every = every
        self._since = 0
        # (feature per node, -1 a leaf; threshold; left child; right child; class shares)
        self._tree: (
            tuple[
                npt.NDArray[np.intp], Float64s, npt.NDArray[np.intp], npt.NDArray[np.intp], Float64s
            ]
            | None
        ) = None

    def learnt(self, knn: KnnWindow) -> None:
        """One more label is in ``knn``: refit on its newest samples every ``every``."""
        self._since += 1
        if self._since >= self.every or self._tree is None:
            self.refit(knn)

    def refit(self, knn: KnnWindow) -> None:
        X, y = knn.newest(self.span)
        if len(y) >= 2 * self.min_leaf:
            self.fit(X, y)
            self._since = 0

    def fit(self, X: Float64s, y: npt.NDArray[Any]) -> None:
        """Grow the tree on ``X`` [n, input values], classes ``y`` [n], and publish it."""
        eye = np.eye(self.num_classes)
        feature: list[int] = []
        threshold: list[float] = []
        left: list[int] = []
        right: list[int] = []
        shares: list[Float64s] = []
        stack = [(np.arange(len(y)), 0, -1, False)]  # rows, depth, parent, is right child
        while stack:
            rows, level, parent, is_right = stack.pop()
            node = len(feature)
            if parent >= 0:
                (right if is_right else left)[parent] = node
            counts = np.bincount(y[rows], minlength=self.num_classes).astype(np.float64)
            shares.append(counts / counts.sum())
            split = (
                self._split(X[rows], eye[y[rows]])
                if level < self.depth and counts.max() < len(rows)
                else None
            )
            feature.append(-1 if split is None else split[0])
            threshold.append(0.0 if split is None else split[1])
            left.append(-1)
            right.append(-1)
            if split is not None:
                goes_left = X[rows, split[0]] <= split[1]
                stack.append((rows[~goes_left], level + 1, node, True))
                stack.append((rows[goes_left], level + 1, node, False))
        self._tree = (
            np.array(feature, np.intp),
            np.array(threshold),
            np.array(left, np.intp),
            np.array(right, np.intp),
            np.array(shares),
        )

    def _split(self, X: Float64s, onehot: Float64s) -> tuple[int, float] | None:
        """The (feature, threshold) of the split with the least Gini impurity, both
        sides at least ``min_leaf`` samples, or None when no split improves on none."""
        n = len(X)
        order = np.argsort(X, axis=0, kind="stable")  # [n, F]
        xs = np.take_along_axis(X, order, axis=0)
        left = np.cumsum(onehot[order], axis=0)[:-1]  # [n - 1, F, C]: the first i + 1
        total = onehot.sum(axis=0)
        n_left = np.arange(1, n)[:, None]
        # Gini impurity x n on each side is n - sum(counts^2) / n: maximise the sums
        purity = (left**2).sum(axis=2) / n_left + ((total - left) ** 2).sum(axis=2) / (n - n_left)
        valid = xs[:-1] < xs[1:]
        valid[: self.min_leaf - 1] = False
        valid[n - self.min_leaf :] = False
        if not valid.any():
            return None
        purity[~valid] = -np.inf
        i, f = np.unravel_index(int(np.argmax(purity)), purity.shape)
        if purity[i, f] <= (total**2).sum() / n + 1e-12:
            return None
        return int(f), float((xs[i, f] + xs[i + 1, f]) / 2.0)

    def predict_one(self, x: npt.NDArray[Any]) -> list[float] | None:
        """The class shares of the leaf ``x`` falls in, or None before the first fit."""
        tree = self._tree
        if tree is None:
            return None
        feature, threshold, left, right, shares = tree
        row = np.asarray(x, np.float64).reshape(-1)
        node = 0
        while feature[node] >= 0:
            node = left[node] if row[feature[node]] <= threshold[node] else right[node]
        out: list[float] = shares[node].tolist()
        return out

    def predict_many(self, xs: npt.NDArray[Any]) -> FloatArray | None:
        """The class shares ``[N, classes]`` for a batch, or None (predict_one)."""
        tree = self._tree
        if tree is None:
            return None
        feature, threshold, left, right, shares = tree
        rows = np.asarray(xs, np.float64).reshape(len(xs), -1)
        nodes = np.zeros(len(rows), np.intp)
        for _ in range(self.depth + 1):
            f = feature[nodes]
            inner = f >= 0
            if not inner.any():
                break
            goes_left = rows[np.arange(len(rows)), np.maximum(f, 0)] <= threshold[nodes]
            nodes = np.where(inner, np.where(goes_left, left[nodes], right[nodes]), nodes)
        return np.asarray(shares[nodes], np.float32)


#: A KnnWindow's state as predicts see it: the standardised samples newest first,
#: their squared norms, their labels, the mean and the scale.
_Snapshot = tuple[Float64s, Float64s, npt.NDArray[np.intp], Float64s, Float64s]

#: Who votes: the k nearest among the span newest samples (None: the whole window).
Voter = tuple[int | None, int]
#: The online linear learner's place among an adapter's voters (no neighbours).
LINEAR: Voter = (None, 0)
#: A tree's k among an adapter's voters: (span, TREE) is the tree refit on the span
#: newest samples (None: the window).
TREE = -1
#: The average of every other voter's class shares, as one more voter.
AVERAGE: Voter = (None, -2)


def describe(voter: Voter) -> str:
    """A voter in words, for logs."""
    span, k = voter
    memory = f"the {span} newest" if span else "the window"
    if voter == LINEAR:
        return "the linear regression"
    if voter == AVERAGE:
        return "the average of the voters"
    return f"the tree of {memory}" if k == TREE else f"k={k} of {memory}"


def _recent(snap: _Snapshot, span: int | None) -> _Snapshot:
    """The snapshot's ``span`` newest samples (views; standardised as the window)."""
    if span is None:
        return snap
    z, zz, ys, mean, scale = snap
    return z[:span], zz[:span], ys[:span], mean, scale


def _nearest(d: Float64s, k: int) -> npt.NDArray[np.intp]:
    """The positions of the ``k`` smallest of ``d``, ties going to the lowest
    positions (the newest samples): a partition, not a sort, of the window."""
    if k >= len(d):
        return np.argsort(d, kind="stable")[:k]
    kth = np.partition(d, k - 1)[k - 1]
    closer = np.flatnonzero(d < kth)
    tied = np.flatnonzero(d == kth)[: k - len(closer)]
    return np.concatenate((closer, tied))


class Adapter:
    """The kNN and its guard: learns labels, compares itself with the served model,
    and tells the chain when to answer (``on_switch(active, sha256)``).

    It votes with each k of ``ks``, over the whole window and over each shorter
    span of ``spans`` of its newest samples, and (``linear``) with an online
    softmax regression, on every label (test-then-train), and answers with the
    voter that was right most often over the last ``choose`` labels (ties: the
    first of ``voters``): one k does not fit every stream — on STAGGER's noiseless
    repeating inputs k = 1 recovers from a drift fastest, on Agrawal's and SEA's
    noisy ones k = 11 does best — nor does one memory: after an abrupt drift the
    newest samples say more; nor does one learner: where the concept is linear the
    regression beats every kNN voter. What the guard compares with the model is the
    answer the adapter would have served, choice of voter included. Its record
    is the last ``compare`` labels; the voters' is longer (``choose``): on a noisy
    stream near-equal voters took turns on 200 labels (LED: 0.7595 served, 0.7625
    with 500).

    ``learn`` runs on feedback threads (serialised by a lock); ``answer`` and
    ``answer_many`` on request threads, lock-free but for their counter.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        window: int = 1000,
        ks: Sequence[int] = (5, 1, 11),
        spans: Sequence[int] = (400,),
        compare: int = 200,
        choose: int = 500,
        alpha: float = 0.2,
        keep_alpha: float = 0.5,
        linear: bool = True,
        trees: Sequence[int] = (400,),
        lead: int = 1,
        average: bool = True,
        on_switch: Callable[[bool, str], bool] | None = None,
    ) -> None:
        self.knn = KnnWindow(num_classes, window, ks, spans)
        self.linear = OnlineLinear(num_classes) if linear else None
        #: Another voter answers once it was right on this many more of the last
        #: ``compare`` labels than the one answering.
        self.lead = lead
        tree_spans = sorted({None if t >= window else t for t in trees}, key=lambda t: t or window)
        self.trees = [WindowTree(num_classes, span) for span in tree_spans]
        self.average = average
        #: Who votes, in order: the kNN's voters, LINEAR (the regression), the trees,
        #: AVERAGE (the mean of their shares).
        self.voters: tuple[Voter, ...] = (
            *self.knn.voters,
            *((LINEAR,) if linear else ()),
            *((t.span, TREE) for t in self.trees),
            *((AVERAGE,) if average else ()),
        )
        self.alpha = alpha
        self.keep_alpha = max(alpha, keep_alpha)
        #: Called to start (True) or stop answering for the version sha256; returns
        #: whether the chain took it (a swap meanwhile refuses a start).
        self.on_switch = on_switch
        self._lock = threading.Lock()
        # Per compared label: [label number, +1 adapter right & model wrong, -1 the
        # reverse, 0 a tie] (a list: a new version's judging rewrites the outcome).
        self._outcomes: deque[list[int]] = deque(maxlen=compare)
        self._b = self._c = 0
        # Per label, which voters were right; and their sums: the voter to answer with.
        self._rights: deque[npt.NDArray[np.int64]] = deque(maxlen=choose)
        self._right = np.zeros(len(self.voters), np.int64)
        self.voter: Voter = self.voters[0]
        self._sha: str | None = None
        #: The current model's own class for one sample and its sha256 (None: no
        #: answer), to judge a new version on the held-out labels: ``rejudge``.
        self.judge: Callable[[npt.NDArray[Any]], tuple[int, str] | None] | None = None
        # Held-out labels among the last ``compare``: (label number, x, y, whether
        # the adapter's answer before learning it was right).
        self._held: deque[tuple[int, npt.NDArray[Any], int, bool]] = deque(maxlen=compare)
        self._seq = 0  # numbers the samples compared: labels and held-out exemplars
        self.rejudged = 0
        self.restarts = 0  # new versions whose record restarted from the held-out labels
        self.exemplars = 0  # samples learnt from a manifest, before the device's own
        self.active = False
        # It answered until the version changed, and the record was not restarted: it
        # offers itself again at ``keep_alpha``.
        self._resume = False
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
        span, k = voter = self.voter
        if voter == AVERAGE:
            votes = self._votes(x)
            shares = None if votes is None else votes[-1]
        elif voter == LINEAR and self.linear is not None:
            shares = self.linear.predict_one(x)
        elif k == TREE:
            shares = self._tree(span).predict_one(x)
        else:
            shares = self.knn.predict_one(x, k, span)
        if shares is not None:
            with self._count_lock:
                self._answered += 1
        return shares

    def answer_many(self, xs: npt.NDArray[Any]) -> FloatArray | None:
        span, k = voter = self.voter
        if voter == AVERAGE:
            rows = [self._votes(x) for x in xs]
            shares = (
                None
                if any(r is None for r in rows)
                else np.array([r[-1] for r in rows if r is not None], np.float32)
            )
        elif voter == LINEAR and self.linear is not None:
            shares = self.linear.predict_many(xs)
        elif k == TREE:
            shares = self._tree(span).predict_many(xs)
        else:
            shares = self.knn.predict_many(xs, k, span)
        if shares is not None:
            with self._count_lock:
                self._answered += len(xs)
        return shares

    # -- feedback threads ---------------------------------------------------

    def start_from(self, X: npt.NDArray[Any], y: npt.NDArray[Any], held_out: int = 0) -> None:
        """Learn labelled samples of the seed data (a manifest's exemplars) before any
        of the device's own. The last ``held_out`` were never trained on: each is
        first compared with the current model's answer (``judge``), test-then-train,
        and counts in the record as a label of the device would; the others are only
        learnt, since the model was trained on them. (Scoring the voters on those too,
        test-then-train, was measured and not kept: digits -0.4 points, no stream
        better.)"""
        n_trained = len(y) - held_out
        with self._lock:
            self.knn.learn_many(X[:n_trained], y[:n_trained])
            if self.linear is not None:
                self.linear.learn_many(X[:n_trained], y[:n_trained])
            for tree in self.trees:
                tree.refit(self.knn)
            self.exemplars += n_trained
        for x, label in zip(X[n_trained:], y[n_trained:], strict=True):
            own = self.judge(x) if self.judge is not None else None
            with self._lock:
                if own is None:
                    self._learn_only(x, int(label))
                else:
                    self._learn(x, int(label), own[0], own[1], held_out=True)
                self.exemplars += 1

    def learn(
        self,
        x: npt.NDArray[Any],
        y: int,
        model_label: int | None,
        sha256: str,
        held_out: bool = False,
    ) -> None:
        """Test-then-train on one label: compare the adapter's answer for ``x`` (before
        learning it) with ``model_label``, the answer of the version ``sha256`` that
        serves now (None: not compared), then learn (x, y), then switch if the
        comparison says so. ``held_out``: the trainers never train on this label, so
        a later version may be judged on it."""
        with self._lock:
            self._learn(x, y, model_label, sha256, held_out)
            self.labels += 1

    def _learn(
        self, x: npt.NDArray[Any], y: int, model_label: int | None, sha256: str, held_out: bool
    ) -> None:
        if sha256 != self._sha:
            self._inherit(sha256)
        mine = self._score_voters(x, y)
        if mine is not None:
            if model_label is not None:
                self._compare(int(mine) - int(model_label == y))
            if held_out:
                self._held.append((self._seq, x, y, mine))
        self._learn_only(x, y)
        self._seq += 1
        needed = self.keep_alpha if self.active or self._resume else self.alpha
        better = self._b > self._c and sign_test_p(self._b, self._c) <= needed
        if better != self.active:
            self._switch(better, sha256)

    def _score_voters(self, x: npt.NDArray[Any], y: int) -> bool | None:
        """Count which voters answer ``x`` right (before learning it) in their record;
        whether the voter answering now was right (None: the kNN cannot vote yet)."""
        votes = self._votes(x)
        if votes is None:
            return None
        right = np.array([int(np.argmax(v)) == y for v in votes], np.int64)
        mine = bool(right[self.voters.index(self.voter)])
        self._score_ks(right)
        return mine

    def _votes(self, x: npt.NDArray[Any]) -> list[list[float]] | None:
        """Every voter's class shares for ``x``, in the order of ``voters`` (a learner
        not yet fitted: all zeros); None while the kNN cannot vote yet."""
        votes = self.knn.predict_each(x)
        if votes is None:
            return None
        none = [0.0] * self.knn.num_classes
        if self.linear is not None:
            votes.append(self.linear.predict_one(x) or none)
        votes += [tree.predict_one(x) or none for tree in self.trees]
        if self.average:
            votes.append(np.mean(votes, axis=0).tolist())
        return votes

    def _learn_only(self, x: npt.NDArray[Any], y: int) -> None:
        self.knn.learn_one(x, y)
        if self.linear is not None:
            self.linear.learn_one(x, y)
        for tree in self.trees:
            tree.learnt(self.knn)

    def _tree(self, span: int | None) -> WindowTree:
        return next(t for t in self.trees if t.span == span)

    @property
    def k(self) -> int:
        """The k of the voter that answers (0: the linear regression, TREE a tree)."""
        return self.voter[1]

    def dropped(self) -> None:
        """The chain no longer answers with the adapter (a swap or a revert): it offers
        itself again on the next label if its record still says it is better."""
        with self._lock:
            self._resume |= self.active
            self.active = False

    def _score_ks(self, right: npt.NDArray[np.int64]) -> None:
        if len(self._rights) == self._rights.maxlen:
            self._right -= self._rights[0]
        self._rights.append(right)
        self._right += right
        best = int(np.argmax(self._right))
        if self._right[best] >= self._right[self.voters.index(self.voter)] + self.lead:
            self.voter = self.voters[best]

    def _compare(self, outcome: int) -> None:
        if len(self._outcomes) == self._outcomes.maxlen:
            self._count(self._outcomes[0][1], -1)
        self._outcomes.append([self._seq, outcome])
        self._count(outcome, 1)

    def _count(self, outcome: int, sign: int) -> None:
        self._b += sign * (outcome == 1)
        self._c += sign * (outcome == -1)

    def _inherit(self, sha256: str) -> None:
        """A new version takes over the record, its held-out labels judged again; unless
        on those it is significantly better than the version it replaces: then the
        record restarts from them alone (the rest would flatter the adapter)."""
        self._sha = sha256
        # the chain dropped the adapter when the version changed; if it answered, the
        # record it takes over is the one it answered on, so the same bar goes on
        self._resume |= self.active
        self.active = False
        judged = self._rejudge(sha256)
        better = sum(new < old for _, old, new in judged)
        worse = sum(new > old for _, old, new in judged)
        if better > worse and sign_test_p(better, worse) <= self.alpha:
            self._outcomes = deque((e for e, _, _ in judged), maxlen=self._outcomes.maxlen)
            self._b = sum(e[1] == 1 for e in self._outcomes)
            self._c = sum(e[1] == -1 for e in self._outcomes)
            self.restarts += 1
            self._resume = False

    def _rejudge(self, sha256: str) -> list[tuple[list[int], int, int]]:
        """Judge the new version on the held-out labels among the last ``compare``: its
        answer now, in place of the old version's, against the adapter's then. No
        version was trained on them; the gate that let it out chose it on others like
        them, which can only favour the model. Returns (entry, old outcome, new one)
        per label judged."""
        judged: list[tuple[list[int], int, int]] = []
        if self.judge is None:
            return judged
        compared = {entry[0]: entry for entry in self._outcomes}
        for n, x, y, right in self._held:
            entry = compared.get(n)
            if entry is None:
                continue  # older than the window
            own = self.judge(x)
            if own is None or own[1] != sha256:
                return []  # another version serves already: its own turn judges it
            old = entry[1]
            self._count(old, -1)
            entry[1] = int(right) - int(own[0] == y)
            self._count(entry[1], 1)
            judged.append((entry, old, entry[1]))
            self.rejudged += 1
        return judged

    def _switch(self, on: bool, sha256: str) -> None:
        taken = self.on_switch(on, sha256) if self.on_switch is not None else True
        if taken:
            self.active = on
            self._resume = False
            self.switches += 1
            logger.info(
                "adapter %s %s after %d labels (%s; adapter/model right alone: %d/%d)",
                "answers instead of" if on else "stops answering for",
                sha256[:12],
                self.labels,
                describe(self.voter),
                self._b,
                self._c,
            )


def wanted(mode: Mode, classifies: bool | None, input_values: int) -> bool:
    """Whether a model gets an adapter: ``knn`` any classifier, ``auto`` a classifier
    whose input has at most AUTO_MAX_VALUES values, ``off`` none (nor regressors)."""
    if mode == "off" or not classifies:
        return False
    return mode == "knn" or input_values <= AUTO_MAX_VALUES
