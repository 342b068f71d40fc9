"""The one wrapper every model is trained and exported in.

``TaskModel`` holds the user's module (``net``: raw float32 batch -> logits or
outputs, see ``cloud.learning.contract``) with the input and task it serves:

- ``logits(x)``: what the module gives, what training and the judges of the
  torch model use (logits of a classifier, outputs of a regressor);
- ``forward(x)``: what the exported file computes: class probabilities (softmax
  as the graph's last op) or the outputs. A uint8 input (camera frames) is cast
  to float32 first, so the file takes uint8 and the module still sees floats.

>>> from shared.task import TaskSpec
>>> from shared.tensors import TensorSpec
>>> m = TaskModel(nn.Linear(3, 2), TensorSpec.flat(3), TaskSpec.classification(["a", "b"]))
>>> [round(p, 4) for p in predict(m, np.zeros((2, 3))).sum(axis=1).tolist()]
[1.0, 1.0]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from shared.task import TaskSpec
from shared.tensors import TensorSpec


class TaskModel(nn.Module):
    """A user's module as edgeloop trains it (``logits``) and exports it (``forward``)."""

    def __init__(self, net: nn.Module, input: TensorSpec, task: TaskSpec) -> None:
        super().__init__()
        self.net = net
        self.input_spec = input
        self.task = task

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (classification) or outputs (regression), from raw float inputs."""
        out: torch.Tensor = self.net(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:  # a uint8 input: one CAST at the file's input
            x = x.to(torch.float32)
        out = self.logits(x)
        return torch.softmax(out, dim=-1) if self.task.is_classification else out


def predict(model: TaskModel, X: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """The torch model's answers (probabilities or outputs) on raw samples, as float32 numpy."""
    model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(torch.as_tensor(np.asarray(X, np.float32)))
    return np.asarray(out.numpy(), np.float32)
