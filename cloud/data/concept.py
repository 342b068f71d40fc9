"""After a drift: which stored samples the newest labels contradict.

The replay buffer and the holdout reservoir keep samples from all time, so that
a model keeps what it learnt. When the world changes where the old samples lie
(the same inputs now carry other labels: the concept was overwritten), those
samples argue against the new labels in every round, and a round cannot learn
the new concept — nor can the gate, which checks forgetting on them, let it.

So after a drift (``cloud.data.replay.DriftMark``, set by the trainer when the served accuracy
drops) the samples labelled since the mark are the *reference* of the current
concept. A stored classifier sample is **contradicted** when it lies within the
reference's reach (its nearest reference sample is no farther than most
reference samples are from each other) and a model of the current concept (the
parent fine-tuned on the reference alone: ``cloud/trainer/rounds.py``) gives it
another label. A round trains without the contradicted samples and the gate
checks forgetting without them. A sample outside the reference's reach is never
contradicted: a concept that still exists (a region the new labels do not
cover) keeps being rehearsed and is still guarded against forgetting.

>>> ref = np.array([[0.0], [0.1], [0.2], [0.3]], np.float32)
>>> X = np.array([[0.05], [0.15], [20.0]], np.float32)
>>> within_reach(ref, X).tolist()
[True, True, False]
>>> contradicted(ref, (X, np.array([0, 1, 0])), now=np.array([1, 1, 1])).tolist()
[True, False, False]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cloud.data.replay import Samples

__all__ = ["contradicted", "within_reach"]

#: A sample is within the reference's reach when its nearest reference sample is no
#: farther than this quantile of the reference samples' own nearest-neighbour distances.
REACH_QUANTILE = 0.9


def contradicted(
    reference_X: npt.ArrayLike, samples: Samples, now: npt.ArrayLike
) -> npt.NDArray[np.bool_]:
    """Per sample: within the reference's reach, and its stored label is not the one
    the current concept gives it (``now``: class indices)."""
    X, y = samples
    if len(y) == 0:
        return np.zeros(0, bool)
    out: npt.NDArray[np.bool_] = within_reach(reference_X, X) & (np.asarray(now) != np.asarray(y))
    return out


def within_reach(reference_X: npt.ArrayLike, X: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Per row of ``X``: whether the reference has data where it lies (features scaled by
    their spread over both)."""
    R = np.asarray(reference_X, np.float32)
    R = R.reshape(len(R), -1)
    S = np.asarray(X, np.float32)
    S = S.reshape(len(S), -1)
    if len(R) < 2 or len(S) == 0:
        return np.zeros(len(S), bool)
    scale = np.concatenate([R, S]).std(axis=0)
    scale[scale == 0] = 1.0
    R, S = R / scale, S / scale
    own = _distances(R, R)
    np.fill_diagonal(own, np.inf)
    reach = float(np.quantile(own.min(axis=1), REACH_QUANTILE))
    out: npt.NDArray[np.bool_] = _distances(S, R).min(axis=1) <= reach
    return out


def _distances(A: npt.NDArray[np.float32], B: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Euclidean distances between the rows of A and of B, [len(A), len(B)]."""
    sq = (A * A).sum(axis=1)[:, None] - 2 * A @ B.T + (B * B).sum(axis=1)[None, :]
    out: npt.NDArray[np.float32] = np.sqrt(np.maximum(sq, 0.0))
    return out
