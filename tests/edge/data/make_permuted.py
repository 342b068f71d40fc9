"""Regenerate the harmful-but-valid model and the labeled digits the guard tests use.

Needs the cloud extra (torch, litert-torch, ai-edge-quantizer, scikit-learn); the
tests only read the files, so the edge-only test run needs none of it (the
imports are inside ``main`` so that doctest collection never pulls torch in):

    .venv/bin/python tests/edge/data/make_permuted.py

- ``permuted_digits.tflite``: the digits CNN trained like the bundled baseline
  (``edgeloop baseline``: all of scikit-learn's digits, seed 0, 30 epochs), with
  the rows of its last layer rolled by one, so that it answers ``(true + 1) % 10``.
  It is exported exactly like a release (static int8, numeric check in the edge
  runtime), so it passes the signature, shape, int8 and probe checks of an edge
  and is wrong on nearly every input: what a bad update looks like.
- ``digits_sample.npz``: 600 of those digits (``x`` float32 [600, 64], ``y``
  int64), a fixed random choice, to feed labeled feedback without scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLES = 600


def main() -> None:
    import numpy as np
    import torch

    from cloud.data.datasets import load_dataset
    from cloud.export.exporter import export_int8
    from cloud.learning.training import Hyperparameters, bootstrap

    ds = load_dataset("digits")
    model = bootstrap(ds, Hyperparameters(epochs=30, batch_size=64, lr=1e-3, seed=0)).model
    last = model.f2  # type: ignore[union-attr]
    rolled = torch.roll(torch.arange(last.out_features), 1)  # output j gets class j-1's logit
    with torch.no_grad():
        last.weight.copy_(last.weight[rolled])
        last.bias.copy_(last.bias[rolled])
    order = np.random.default_rng(0).permutation(len(ds.y))
    exported = export_int8(model, ds.X[order[:200]], ds.X[order[200:232]])
    (HERE / "permuted_digits.tflite").write_bytes(exported.content)

    pick = np.random.default_rng(1).permutation(len(ds.y))[:SAMPLES]
    np.savez_compressed(
        HERE / "digits_sample.npz",
        x=ds.X[pick].astype(np.float32),
        y=ds.y[pick].astype(np.int64),
    )
    accuracy = float(np.mean(model(torch.from_numpy(ds.X[pick])).argmax(1).numpy() == ds.y[pick]))
    print(
        f"permuted_digits.tflite {exported.sha256[:12]}: accuracy {accuracy:.3f} (meant to be low)"
    )


if __name__ == "__main__":
    main()
