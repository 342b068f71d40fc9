"""A depthwise-separable CNN for small uint8 frames ``[H, W, C]`` (MobileNet's building
block: a 3x3 depthwise conv, then a 1x1 pointwise conv), the kind of model that
fits a weak CPU. Frames arrive as raw 0..255 pixels; the scaling is the model's
first op.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _separable(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin),
        nn.ReLU(),
        nn.Conv2d(cin, cout, 1),
        nn.ReLU(),
    ]


class PartsCNN(nn.Module):
    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, 24, 3, stride=1, padding=1)
        self.blocks = nn.Sequential(
            *_separable(24, 32, 2), *_separable(32, 48, 2), *_separable(48, 64, 2)
        )
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x * (1.0 / 255.0)).permute(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
        x = torch.relu(self.stem(x))
        x = self.blocks(x)
        return self.head(x.mean(dim=(2, 3)))


def build(info: Any) -> nn.Module:
    return PartsCNN(int(info.input.shape[-1]), len(info.task.labels))
