"""The diagonal of the empirical Fisher information: how sharply the loss curves per parameter.

Around a trained model the loss grows like ``½ Σ F_i (w_i − w*_i)²``, with F the
Fisher information; its diagonal, estimated as the mean squared gradient of the
loss over small batches of the training data, says which parameters the model
is sensitive to. The budgeted update ranks the values it may change by it
(cloud/export/budgeted.py).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from cloud.learning.models import TaskModel
from cloud.learning.training import loss_of, truths_tensor

#: Samples per gradient in the Fisher estimate; at most FISHER_SAMPLES samples.
FISHER_BATCH = 16
FISHER_SAMPLES = 2000


def fisher_diagonal(
    model: TaskModel, X: npt.NDArray[Any], y: npt.NDArray[Any], seed: int = 0
) -> dict[str, npt.NDArray[np.float64]]:
    """Mean squared gradient of the loss per parameter over small batches of (X, y):
    the diagonal of the empirical Fisher information, the loss's curvature."""
    order = np.random.default_rng(seed).permutation(len(y))[:FISHER_SAMPLES]
    Xt = torch.as_tensor(np.ascontiguousarray(X[order], np.float32))
    yt = truths_tensor(np.asarray(y)[order], model.task)
    loss_fn = loss_of(model.task)
    probe = copy.deepcopy(model).eval()
    total = {n: torch.zeros_like(p) for n, p in probe.named_parameters()}
    batches = 0
    for idx in torch.split(torch.arange(len(yt)), FISHER_BATCH):
        probe.zero_grad()
        torch.autograd.backward(loss_fn(probe.logits(Xt[idx]), yt[idx]))
        for n, p in probe.named_parameters():
            if p.grad is not None:
                total[n] += p.grad.detach() ** 2
        batches += 1
    return {n: (t / max(batches, 1)).numpy().astype(np.float64) for n, t in total.items()}
