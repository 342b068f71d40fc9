"""A depthwise-separable CNN for small frames ``[H, W, C]`` (MobileNet's building block:
a 3x3 depthwise conv, then a 1x1 pointwise conv), the kind of model that fits a weak
CPU. Frames arrive as raw 0..255 pixels (uint8 on the wire); the per-channel
standardization with the seed frames' statistics is the model's first op.

A full 3x3 conv with stride 2 makes the stem (a depthwise conv over 3 channels
sees too little), average pooling halves the resolution after each next stage,
and a small dense head reads the 4x4 map, so that where the part's edges and
corners are counts. Without batch norm (the budgeted rounds map every parameter onto the int8 file), a stack
of depthwise convs with only global pooling at the end barely moves from chance
in the 25 epochs of a bootstrap on a few hundred frames; this one reaches about
0.87 in them (quick demo: 1500 frames, 450 of them for the bootstrap).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _separable(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cin, 3, padding=1, groups=cin),  # depthwise
        nn.Conv2d(cin, cout, 1),  # pointwise
        nn.ReLU(),
        nn.AvgPool2d(2),
    ]


class PartsCNN(nn.Module):
    def __init__(
        self, channels: int, classes: int, size: int, mean: torch.Tensor, std: torch.Tensor
    ) -> None:
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1))
        self.register_buffer("inv_std", (1.0 / std).reshape(1, -1, 1, 1))
        # strided: a stride-1 stem (then pooling) costs four times these multiply-adds,
        # more than the whole rest of the net, for no better accuracy; and a round's
        # time is what decides how soon the fleet has a model for the new light
        self.stem = nn.Sequential(nn.Conv2d(channels, 12, 3, stride=2, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(*_separable(12, 32), *_separable(32, 48))
        side = size // 8
        self.f1 = nn.Linear(48 * side * side, 32)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.permute(0, 3, 1, 2) - self.mean) * self.inv_std  # [N, H, W, C] -> [N, C, H, W]
        x = self.blocks(self.stem(x))
        return self.head(torch.relu(self.f1(x.flatten(1))))


def build(info: Any) -> nn.Module:
    X = torch.as_tensor(info.X, dtype=torch.float32)
    pixels = X.reshape(-1, X.shape[-1])
    return PartsCNN(
        int(X.shape[-1]),
        len(info.task.labels),
        int(X.shape[1]),
        pixels.mean(dim=0),
        pixels.std(dim=0).clamp_min(1.0),
    )
