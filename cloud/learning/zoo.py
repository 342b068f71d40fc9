"""edgeloop's own models, on the same contract as a user's (``cloud.learning.contract``).

Each entry takes a ``DataInfo`` and returns a module from raw float32 inputs to
logits or outputs, with its normalization inside:

- ``digits``: the digits CNN (8x8 pixels 0..16 as 64 values): two 3x3 convs, a
  pool, two dense layers;
- ``mlp``: standardization from the seed data, then three dense layers (flat
  inputs; a regressor's outputs are put back in the targets' units);
- ``regression_mlp``: the same for regression only;
- ``dwcnn``: a depthwise-separable CNN for small ``[H, W, C]`` images (uint8 or
  float), per-channel standardization, a strided stem and a dense head on a ~4x4 map;
- ``cnn1d``: a 1-D CNN for sensor windows ``[T, C]``, per-channel standardization.

Every layer is one the exporter turns into an int8 kernel (conv, depthwise
conv, dense, pooling, ReLU, mean), and none uses batch norm, so that the
trainer's budgeted rounds can map each parameter onto the int8 file.

>>> from cloud.data.datasets import load_dataset
>>> from cloud.learning.contract import DataInfo
>>> default_model(load_dataset("digits"))
'digits'
>>> sorted(ZOO)
['cnn1d', 'digits', 'dwcnn', 'mlp', 'regression_mlp']
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cloud.data.datasets import Dataset
from cloud.data.import_spec import is_import_spec
from cloud.learning.contract import DataInfo, ModelError


class Standardize(nn.Module):
    """(x - mean) * 1/std with statistics of the seed data, per feature or per channel."""

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, mean: npt.ArrayLike, std: npt.ArrayLike) -> None:
        super().__init__()
        std = np.where(np.asarray(std) < 1e-6, 1.0, std)
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        # Multiply by 1/std rather than divide: one MUL that the exporter keeps in float.
        self.register_buffer("inv_std", torch.as_tensor(1.0 / std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


class DigitsCNN(nn.Module):
    """8x8 digit images as 64 raw pixels (0..16): two 3x3 convs, a pool, two FC layers."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.f1 = nn.Linear(32 * 4 * 4, 64)
        self.f2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x * (1.0 / 16.0)).reshape(-1, 1, 8, 8)
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = nn.functional.max_pool2d(x, 2).flatten(1)
        out: torch.Tensor = self.f2(torch.relu(self.f1(x)))
        return out


class TabularMLP(nn.Module):
    """Standardization (buffers from the seed data) then a two-layer MLP; a regressor's
    outputs are de-standardized with the seed targets' statistics."""

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(
        self,
        mean: npt.ArrayLike,
        std: npt.ArrayLike,
        width: int,
        hidden: int = 64,
        targets: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    ) -> None:
        super().__init__()
        std = np.where(np.asarray(std) < 1e-6, 1.0, std)
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        # Multiply by 1/std rather than divide: one MUL that the exporter keeps in float.
        self.register_buffer("inv_std", torch.as_tensor(1.0 / std, dtype=torch.float32))
        features = int(np.asarray(mean).size)
        self.f1 = nn.Linear(features, hidden)
        self.f2 = nn.Linear(hidden, hidden // 2)
        self.f3 = nn.Linear(hidden // 2, width)
        self.scale = OutputScale(*targets) if targets is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:  # a flat sample needs no reshape op in the graph
            x = x.flatten(1)
        x = (x - self.mean) * self.inv_std
        x = torch.relu(self.f1(x))
        x = torch.relu(self.f2(x))
        out: torch.Tensor = self.f3(x)
        return out if self.scale is None else self.scale(out)


class OutputScale(nn.Module):
    """A regressor's outputs from standardized units back to the targets' units."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: npt.ArrayLike, std: npt.ArrayLike) -> None:
        super().__init__()
        std = np.where(np.asarray(std) < 1e-6, 1.0, std)
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


STEM_CHANNELS = 12
STAGE_CHANNELS = (32, 48, 64, 64)
HEAD_SIDE = 4
HEAD_WIDTH = 32


class DepthwiseCNN(nn.Module):
    """Small ``[H, W, C]`` images: per-channel standardization, a strided 3x3 conv,
    depthwise-separable stages that each halve the map (average pooling) down to
    about 4x4, then a small dense head on that map.

    Why this shape: without batch norm (the budgeted rounds map every parameter onto
    the int8 file), a stack of stride-1 depthwise convs read through a global mean
    stays at chance for a whole bootstrap on a few hundred frames (a 32x32 parts set:
    0.26 on four classes), as does x/255 input (all positive, far from zero mean).
    Standardized input, a full conv as the stem (a depthwise conv over three channels
    sees too little) and a head that still sees *where* the edges and corners are
    reach about 0.9 there in the same 25 epochs, for a quarter of the stride-1
    stem's multiply-adds.
    """

    def __init__(self, info: DataInfo, scale: OutputScale | None) -> None:
        super().__init__()
        h, w, c = info.input_shape
        X = info.float_X()
        # uint8 pixels too: x/255 keeps every input positive, and the first layers
        # then learn far slower than on zero-mean input; a std floor of one grey level
        # keeps a flat channel from being blown up
        std = np.maximum(X.std(axis=(0, 1, 2)), 1.0 if info.input.dtype == "uint8" else 0.0)
        self.norm = Standardize(X.mean(axis=(0, 1, 2)), std)
        self.stem = nn.Conv2d(c, STEM_CHANNELS, 3, stride=2, padding=1)
        h, w = (h + 1) // 2, (w + 1) // 2
        stages: list[nn.Module] = []
        cin = STEM_CHANNELS
        for i, cout in enumerate(STAGE_CHANNELS):  # at least two stages, more for larger maps
            stages += [
                nn.Conv2d(cin, cin, 3, padding=1, groups=cin),  # depthwise
                nn.Conv2d(cin, cout, 1),  # pointwise
                nn.ReLU(),
            ]
            cin = cout
            if min(h, w) >= 2 * HEAD_SIDE:
                stages.append(nn.AvgPool2d(2))
                h, w = h // 2, w // 2
            if i >= 1 and min(h, w) < 2 * HEAD_SIDE:
                break
        self.stages = nn.Sequential(*stages)
        self.f1 = nn.Linear(cin * h * w, HEAD_WIDTH)
        self.head = nn.Linear(HEAD_WIDTH, info.width)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).permute(0, 3, 1, 2)
        x = self.stages(torch.relu(self.stem(x)))
        out: torch.Tensor = self.head(torch.relu(self.f1(x.flatten(1))))
        return out if self.scale is None else self.scale(out)


class SensorCNN(nn.Module):
    """Sensor windows ``[T, C]``: per-channel standardization, three 1-D convs, global mean."""

    def __init__(self, info: DataInfo, scale: OutputScale | None) -> None:
        super().__init__()
        _, c = info.input_shape
        X = info.float_X()
        self.norm = Standardize(X.mean(axis=(0, 1)), X.std(axis=(0, 1)))
        self.c1 = nn.Conv1d(c, 16, 5, padding=2)
        self.c2 = nn.Conv1d(16, 32, 5, padding=2)
        self.c3 = nn.Conv1d(32, 32, 3, padding=1)
        self.head = nn.Linear(32, info.width)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).permute(0, 2, 1)
        x = nn.functional.max_pool1d(torch.relu(self.c1(x)), 2)
        x = nn.functional.max_pool1d(torch.relu(self.c2(x)), 2)
        x = torch.relu(self.c3(x))
        out: torch.Tensor = self.head(x.mean(dim=2))
        return out if self.scale is None else self.scale(out)


# -- the builders ----------------------------------------------------------------------


def digits(info: DataInfo) -> nn.Module:
    if info.input.size != 64 or not info.task.is_classification:
        raise ModelError(
            f"model 'digits': the digits CNN classifies 64 pixels (8x8); the data has "
            f"{info.input.describe()} samples and a {info.task.kind} task"
        )
    return DigitsCNN(info.width)


def mlp(info: DataInfo) -> nn.Module:
    X = info.float_X().reshape(len(info.X), -1)
    return TabularMLP(X.mean(axis=0), X.std(axis=0), info.width, targets=_targets(info))


def regression_mlp(info: DataInfo) -> nn.Module:
    if info.task.is_classification:
        raise ModelError("model 'regression_mlp': the task is a classification; use 'mlp'")
    return mlp(info)


def dwcnn(info: DataInfo) -> nn.Module:
    if len(info.input_shape) != 3:
        raise ModelError(
            f"model 'dwcnn': takes images [H, W, C]; the samples are {info.input.describe()}"
        )
    return DepthwiseCNN(info, _scale(info))


def cnn1d(info: DataInfo) -> nn.Module:
    if len(info.input_shape) != 2:
        raise ModelError(
            f"model 'cnn1d': takes sensor windows [T, C]; the samples are {info.input.describe()}"
        )
    return SensorCNN(info, _scale(info))


def _targets(info: DataInfo) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    if info.task.is_classification:
        return None
    y = np.asarray(info.y, np.float64).reshape(len(info.y), -1)
    return y.mean(axis=0), y.std(axis=0)


def _scale(info: DataInfo) -> OutputScale | None:
    targets = _targets(info)
    return None if targets is None else OutputScale(*targets)


ZOO: dict[str, Callable[[DataInfo], nn.Module]] = {
    "digits": digits,
    "mlp": mlp,
    "regression_mlp": regression_mlp,
    "dwcnn": dwcnn,
    "cnn1d": cnn1d,
}


def default_model(dataset: Dataset) -> str:
    """The zoo model for a dataset: digits for the digits, an MLP for flat samples (a
    regression MLP for a regression), the depthwise CNN for images, the 1-D CNN for windows."""
    if dataset.kind == "digits":
        return "digits"
    rank = len(dataset.input.shape)
    if rank == 3:
        return "dwcnn"
    if rank == 2:
        return "cnn1d"
    return "mlp" if dataset.task.is_classification else "regression_mlp"


def model_spec(setting: str, dataset: Dataset) -> str:
    """What a trainer's ``model`` setting builds: a zoo model or an import spec as given,
    any other name the dataset's default zoo model."""
    return setting if setting in ZOO or is_import_spec(setting) else default_model(dataset)
