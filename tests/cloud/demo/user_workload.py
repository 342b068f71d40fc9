"""A user's model file and ``.npz`` dataset, written where a user would keep them (a
test's tmp_path): the stand-in for a workload the developers did not write into the
repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: A user's model file: an MLP over any input shape, its normalization inside, for a
#: classification (logits) or a regression (outputs in the targets' units).
MODEL_PY = """
import torch
from torch import nn


class SensorNet(nn.Module):
    def __init__(self, mean, std, width, y_mean, y_std):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", 1.0 / std)
        self.f1 = nn.Linear(mean.numel(), 48)
        self.f2 = nn.Linear(48, 48)
        self.out = nn.Linear(48, width)
        self.y_mean, self.y_std = y_mean, y_std

    def forward(self, x):
        x = ((x - self.mean) * self.inv_std).flatten(1)
        x = torch.relu(self.f2(torch.relu(self.f1(x))))
        return self.out(x) * self.y_std + self.y_mean


def build(info):
    X = torch.as_tensor(info.X, dtype=torch.float32)
    y_mean, y_std = 0.0, 1.0
    if info.task.kind == "regression":
        y = torch.as_tensor(info.y, dtype=torch.float32)
        y_mean, y_std = float(y.mean()), float(y.std())
    return SensorNet(X.mean(0), X.std(0).clamp_min(1e-3), info.width, y_mean, y_std)
"""


def write_model(folder: Path, source: str = MODEL_PY, name: str = "my_model.py") -> Path:
    path = folder / name
    path.write_text(source)
    return path


def regression_arrays(seed: int = 0, n: int = 1500) -> dict[str, np.ndarray]:
    """Windows ``[12, 2]`` of a flow meter and a pressure sensor; the target is the
    line's throughput. Noise dominates what is left after a good fit (the error floor
    is about 1.2), so a recovered model lands near it before and after the drift.
    The drift: the pressure sensor is replaced by one with another zero and gain."""
    rng = np.random.default_rng(seed)

    def windows(offset: float, gain: float) -> tuple[np.ndarray, np.ndarray]:
        flow = rng.uniform(2, 10, (n, 1)) + rng.normal(0, 0.3, (n, 12))
        pressure = rng.uniform(1, 5, (n, 1)) + rng.normal(0, 0.2, (n, 12))
        y = 1.5 * flow.mean(1) + 2.0 * pressure[:, -1] + rng.normal(0, 1.5, n)
        X = np.stack([flow, pressure * gain + offset], axis=2)
        return X.astype(np.float32), y.astype(np.float32)

    X, y = windows(0.0, 1.0)
    X_drift, y_drift = windows(-3.0, 1.6)
    return {"X": X, "y": y, "X_drift": X_drift, "y_drift": y_drift}


def write_npz(folder: Path, name: str = "windows.npz", **arrays: np.ndarray) -> Path:
    path = folder / name
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path
