"""Regenerate the model files the edge tests refuse or use as odd baselines.

Needs the cloud extra (torch, litert-torch, ai-edge-quantizer); the tests only
read the files, so the edge-only test run needs none of it (and the imports
below are inside ``main`` so that doctest collection never pulls torch in):

    .venv/bin/python tests/edge/data/make_models.py

- ``float_digits.tflite``: a float32 64 -> 10 classifier (float compute ops)
- ``dynamic_digits.tflite``: the same, dynamic-range quantized (int8 weights,
  float activations): the kind of file edges must never serve
- ``float_16features.tflite``: a float32 16 -> 10 classifier, for a baseline
  whose shape does not match the served model
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def export(features: int, path: Path) -> None:
    import litert_torch
    import torch

    torch.manual_seed(features)
    model = torch.nn.Sequential(
        torch.nn.Linear(features, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 10),
        torch.nn.Softmax(dim=-1),
    ).eval()
    litert_torch.convert(model, (torch.rand(1, features) * 16,)).export(str(path))


def main() -> None:
    from ai_edge_quantizer import quantizer, recipe

    export(64, HERE / "float_digits.tflite")
    export(16, HERE / "float_16features.tflite")
    q = quantizer.Quantizer(str(HERE / "float_digits.tflite"))
    q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    q.quantize().export_model(str(HERE / "dynamic_digits.tflite"), overwrite=True)


if __name__ == "__main__":
    main()
