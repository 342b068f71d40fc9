"""After a drift: which stored samples the newest labels contradict.

The replay buffer and the holdout reservoir keep samples from all time, so that
a model keeps what it learnt. When the world changes where the old samples lie
(the same inputs now carry other labels: the concept was overwritten), those
samples argue against the new labels in every round, and a round cannot learn
the new concept — nor can the gate, which checks forgetting on them, let it.

So after a drift (``DriftMark``, set by the trainer when the served accuracy
drops) the samples labelled since the mark are the *reference* of the current
concept, and a stored classifier sample is **contradicted** when it lies where
the reference has data and most of its nearest reference samples carry another
label. A round trains without the contradicted samples and the gate checks
forgetting without them. A sample outside the reference's reach is never
contradicted: a concept that still exists (a region the new labels do not
cover) keeps being rehearsed and is still guarded against forgetting.

>>> ref_X = np.array([[0.0], [0.1], [0.2], [5.0]], np.float32)
>>> ref_y = np.array([1, 1, 1, 0])
>>> X = np.array([[0.05], [0.15], [20.0]], np.float32)
>>> contradicted((ref_X, ref_y), (X, np.array([0, 1, 0])), k=3).tolist()
[True, False, False]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cloud.data.replay import DriftMark, Samples

__all__ = ["DriftMark", "contradicted"]

#: Nearest reference samples that vote on a stored sample.
NEIGHBOURS = 5
#: A stored sample is within the reference's reach when its nearest reference
#: sample is no farther than this quantile of the reference's own nearest-neighbour
#: distances.
REACH_QUANTILE = 0.9


def contradicted(
    reference: Samples, samples: Samples, k: int = NEIGHBOURS
) -> npt.NDArray[np.bool_]:
    """Per sample: whether the reference (the newest labels) contradicts its label."""
    ref_X, ref_y = reference
    X, y = samples
    if len(ref_y) < 2 or len(y) == 0:
        return np.zeros(len(y), bool)
    R = np.asarray(ref_X, np.float32).reshape(len(ref_y), -1)
    S = np.asarray(X, np.float32).reshape(len(y), -1)
    scale = np.concatenate([R, S]).std(axis=0)
    scale[scale == 0] = 1.0
    R, S = R / scale, S / scale
    k = min(k, len(ref_y))
    d = _distances(S, R)
    near = np.argpartition(d, k - 1, axis=1)[:, :k]
    agree = (np.asarray(ref_y)[near] == np.asarray(y)[:, None]).sum(axis=1)
    own = _distances(R, R)
    np.fill_diagonal(own, np.inf)
    reach = float(np.quantile(own.min(axis=1), REACH_QUANTILE))
    out: npt.NDArray[np.bool_] = (d.min(axis=1) <= reach) & (2 * agree < k)
    return out


def _distances(A: npt.NDArray[np.float32], B: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Euclidean distances between the rows of A and of B, [len(A), len(B)]."""
    sq = (A * A).sum(axis=1)[:, None] - 2 * A @ B.T + (B * B).sum(axis=1)[None, :]
    out: npt.NDArray[np.float32] = np.sqrt(np.maximum(sq, 0.0))
    return out
