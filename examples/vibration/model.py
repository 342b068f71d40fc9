"""A 1-D CNN over accelerometer windows ``[T, C]``: what a user brings, on edgeloop's contract.

``build(info)`` gets the data's description and returns a torch module mapping a
float32 batch of raw windows ``[N, T, C]`` to class logits. Normalization lives in
the model (per-channel scale from the seed windows), so the edge sends raw
readings. Every layer has an int8 kernel (conv1d, ReLU, pooling, dense).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class VibrationCNN(nn.Module):
    def __init__(self, channels: int, classes: int, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("inv_scale", 1.0 / scale)
        self.c1 = nn.Conv1d(channels, 16, 9, stride=2, padding=4)
        self.c2 = nn.Conv1d(16, 32, 7, stride=2, padding=3)
        self.c3 = nn.Conv1d(32, 32, 5, stride=2, padding=2)
        self.f1 = nn.Linear(32, 32)
        self.f2 = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x * self.inv_scale).transpose(1, 2)  # [N, T, C] -> [N, C, T]
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x))
        x = x.mean(dim=2)  # global average over time
        return self.f2(torch.relu(self.f1(x)))


def build(info: Any) -> nn.Module:
    X = torch.as_tensor(info.X, dtype=torch.float32)
    scale = X.reshape(-1, X.shape[-1]).std(dim=0).clamp_min(1e-3)
    return VibrationCNN(int(X.shape[-1]), len(info.task.labels), scale)
