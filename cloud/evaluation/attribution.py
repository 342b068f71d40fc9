"""Feature attribution shift: which inputs a model relies on, before and after an update.

Integrated gradients (captum) on the torch models, for each model's own
predicted class, on the logits (a saturated softmax would hide most of the
signal). Per input, the mean |attribution| over a probe set, normalized to sum
1, is that model's importance map; the shift between two maps is their total
variation distance (half the L1 distance): 0 when the model looks at the
same inputs in the same proportions, 1 when it looks at entirely different ones.

The baseline is the model's own notion of "no signal": the standardization
mean for tabular models (a buffer named ``mean``), an all-zero input otherwise
(a blank image for digits).

>>> feature_names(4, (2, 2))
['r0c0', 'r0c1', 'r1c0', 'r1c1']
>>> total_variation([0.5, 0.5, 0.0], [0.0, 0.5, 0.5])
0.5
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import torch

from cloud.learning.models import Classifier
from shared.messages import AttributionShift, FeatureShift

logger = logging.getLogger(__name__)

#: Integration steps (captum's default Gauss-Legendre rule; its default count is 50). At 24 the
#: completeness error on the digits CNN stays under 1% (measured on 48 samples: median 0.2%,
#: max 0.7%) at half the cost of 50.
IG_STEPS = 24
#: Inputs named in ``gained`` and ``lost``.
TOP_FEATURES = 5


def feature_names(num_features: int, grid: tuple[int, int] | None) -> list[str]:
    """``r<row>c<col>`` for image inputs, ``f<index>`` otherwise."""
    if grid is not None and grid[0] * grid[1] == num_features:
        return [f"r{i // grid[1]}c{i % grid[1]}" for i in range(num_features)]
    return [f"f{i}" for i in range(num_features)]


def total_variation(p: npt.ArrayLike, q: npt.ArrayLike) -> float:
    return round(float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum()), 6)


def importance(model: Classifier, X: npt.NDArray[np.float32], steps: int = IG_STEPS) -> list[float]:
    """Mean |integrated gradients| per input for the predicted class, normalized to sum 1."""
    from captum.attr import IntegratedGradients

    model.eval()
    x = torch.as_tensor(np.asarray(X, np.float32))
    mean = getattr(model, "mean", None)
    baseline = (
        mean.detach().expand_as(x).clone()
        if isinstance(mean, torch.Tensor)
        else torch.zeros_like(x)
    )
    with torch.no_grad():
        target = model.logits(x).argmax(dim=1)
    attr = IntegratedGradients(model.logits).attribute(
        x, baselines=baseline, target=target, n_steps=steps
    )
    score = attr.detach().abs().mean(dim=0).double().numpy()
    total = float(score.sum())
    share = score / total if total > 0 else np.full_like(score, 1.0 / len(score))
    return [round(float(v), 6) for v in share]


def attribution_shift(
    parent: Classifier | None,
    child: Classifier,
    X: npt.NDArray[np.float32],
    *,
    grid: tuple[int, int] | None = None,
    steps: int = IG_STEPS,
) -> AttributionShift:
    """Importance maps of both models on the probe ``X`` and the inputs that moved most."""
    names = feature_names(X.shape[1], grid)
    method = (
        "integrated gradients (captum) on the logits of each model's predicted class, "
        f"baseline {'the standardization mean' if hasattr(child, 'mean') else 'an all-zero input'}, "
        f"{steps} steps; importance = mean |attribution| per input, normalized to sum 1"
    )
    out = AttributionShift(
        method=method, probe_samples=len(X), steps=steps, grid=list(grid) if grid else None
    )
    if len(X) == 0:
        return out
    out.child_importance = importance(child, X, steps)
    if parent is None:
        return out
    out.parent_importance = importance(parent, X, steps)
    before, after = np.asarray(out.parent_importance), np.asarray(out.child_importance)
    change = after - before
    order = np.argsort(change, kind="stable")

    def shift(i: int) -> FeatureShift:
        return FeatureShift(
            feature=names[i],
            index=int(i),
            parent=round(float(before[i]), 6),
            child=round(float(after[i]), 6),
            change=round(float(change[i]), 6),
        )

    out.gained = [shift(int(i)) for i in order[::-1][:TOP_FEATURES] if change[i] > 0]
    out.lost = [shift(int(i)) for i in order[:TOP_FEATURES] if change[i] < 0]
    out.shift_score = total_variation(before, after)
    return out
