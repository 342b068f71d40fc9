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
    The drift: the pressure sensor is replaced by one with a zero 6 bar higher. Its
    readings leave the range the old version was calibrated on (the int8 input clips
    them, and the old version's error grows about threefold), and they do not overlap
    the old concept's, so replayed old samples never contradict new ones and an
    update can come back to the error floor."""
    rng = np.random.default_rng(seed)

    def windows(offset: float, gain: float) -> tuple[np.ndarray, np.ndarray]:
        flow = rng.uniform(2, 10, (n, 1)) + rng.normal(0, 0.3, (n, 12))
        pressure = rng.uniform(1, 5, (n, 1)) + rng.normal(0, 0.2, (n, 12))
        y = 1.5 * flow.mean(1) + 2.0 * pressure[:, -1] + rng.normal(0, 1.5, n)
        X = np.stack([flow, pressure * gain + offset], axis=2)
        return X.astype(np.float32), y.astype(np.float32)

    X, y = windows(0.0, 1.0)
    X_drift, y_drift = windows(6.0, 1.0)
    return {"X": X, "y": y, "X_drift": X_drift, "y_drift": y_drift}


def write_npz(folder: Path, name: str = "windows.npz", **arrays: np.ndarray) -> Path:
    path = folder / name
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


#: Another user's model file: a small 1-D CNN classifier over ``[T, C]`` windows,
#: its per-channel standardization inside.
CONV_PY = """
import torch
from torch import nn


class GestureNet(nn.Module):
    def __init__(self, mean, std, steps, classes):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", 1.0 / std)
        channels = mean.numel()
        self.c1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.c2 = nn.Conv1d(16, 24, 5, stride=2, padding=2)
        self.f1 = nn.Linear(24 * ((steps + 1) // 2), 32)
        self.out = nn.Linear(32, classes)

    def forward(self, x):
        x = ((x - self.mean) * self.inv_std).transpose(1, 2)
        x = torch.relu(self.c2(torch.relu(self.c1(x)))).flatten(1)
        return self.out(torch.relu(self.f1(x)))


def build(info):
    X = torch.as_tensor(info.X, dtype=torch.float32)
    channels = X.reshape(-1, X.shape[-1])
    steps = int(X.shape[1])
    return GestureNet(channels.mean(0), channels.std(0).clamp_min(1e-3), steps, info.width)
"""

GESTURES = ["rest", "wave", "shake", "tap"]


def classification_arrays(seed: int = 0, n: int = 1500) -> dict[str, np.ndarray]:
    """Windows ``[32, 3]`` of a wrist band's accelerometer (g); the class is the wearer's
    gesture: at rest, a slow wave (side to side), a fast shake, or taps (spikes along
    the arm). The drift: the band is worn on the other wrist, so the axis across the
    wrist reads with the opposite sign."""
    rng = np.random.default_rng(seed)
    t = np.arange(32)[None, :]

    def windows(flipped: bool) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, len(GESTURES), n)
        X = rng.normal(0, 0.08, (n, 32, 3))
        X[:, :, 2] += 1.0  # gravity
        phase = rng.uniform(0, 2 * np.pi, (n, 1))
        amp = rng.uniform(0.5, 1.0, (n, 1))
        wave, shake, tap = y == 1, y == 2, y == 3
        X[wave, :, 0] += (amp * np.sin(2 * np.pi * t / 16 + phase))[wave] + 0.4
        X[shake, :, 1] += (amp * np.sin(2 * np.pi * t / 4 + phase))[shake] - 0.3
        spikes = (rng.random((n, 32)) < 0.15) * rng.uniform(1.0, 2.0, (n, 32))
        X[tap, :, 0] += 0.3 * spikes[tap]
        X[tap, :, 2] -= spikes[tap]
        if flipped:  # the axis across the wrist points the other way
            X[:, :, 0] *= -1
        return X.astype(np.float32), y.astype(np.int64)

    X, y = windows(False)
    X_drift, y_drift = windows(True)
    return {"X": X, "y": y, "labels": np.array(GESTURES), "X_drift": X_drift, "y_drift": y_drift}
