"""Regenerate the model files the edge tests refuse or use as odd baselines.

Needs the cloud extra (torch, litert-torch, ai-edge-quantizer); the tests only
read the files, so the edge-only test run needs none of it:

    .venv/bin/python tests/edge/data/make_models.py

- ``float_digits.tflite``: a float32 64 -> 10 classifier (float compute ops)
- ``dynamic_digits.tflite``: the same, dynamic-range quantized (int8 weights,
  float activations): the kind of file edges must never serve
- ``float_16features.tflite``: a float32 16 -> 10 classifier, for a baseline
  whose shape does not match the served model
"""

from __future__ import annotations

from pathlib import Path

import litert_torch
import torch
from ai_edge_quantizer import quantizer, recipe

HERE = Path(__file__).resolve().parent


class Mlp(torch.nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(features, 32)
        self.fc2 = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc2(torch.relu(self.fc1(x / 16.0))), dim=-1)


def export(features: int, path: Path) -> None:
    torch.manual_seed(features)
    model = Mlp(features).eval()
    litert_torch.convert(model, (torch.rand(1, features) * 16,)).export(str(path))


def main() -> None:
    export(64, HERE / "float_digits.tflite")
    export(16, HERE / "float_16features.tflite")
    q = quantizer.Quantizer(str(HERE / "float_digits.tflite"))
    q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    q.quantize().export_model(str(HERE / "dynamic_digits.tflite"), overwrite=True)


if __name__ == "__main__":
    main()
