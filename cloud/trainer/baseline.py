"""The bundled digits baseline: the last link of every edge's fallback chain.

Trained on all of scikit-learn's digits with a fixed seed and exported exactly
like a release (static int8, checked in the edge runtime), so that the file in
``edge/baseline`` is reproducible with ``edgeloop baseline``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cloud.data.datasets import load_dataset
from cloud.export.exporter import export_int8, write_atomic
from cloud.learning.training import Hyperparameters, bootstrap

logger = logging.getLogger(__name__)

NAME = "digits-baseline"


def make_baseline(out: Path, *, seed: int = 0, epochs: int = 30) -> tuple[Path, dict[str, Any]]:
    """Write ``digits.tflite`` and ``digits.json`` into ``out``; return the file and its metadata."""
    ds = load_dataset("digits")
    result = bootstrap(ds, Hyperparameters(epochs=epochs, batch_size=64, lr=1e-3, seed=seed))
    order = np.random.default_rng(seed).permutation(len(ds.y))
    exported = export_int8(result.model, ds.X[order[:200]], ds.X[order[200:232]])
    meta = {
        "name": NAME,
        "sha256": exported.sha256,
        "num_features": ds.num_features,
        "labels": ds.labels,
        "int8_agreement": round(exported.agreement, 4),
        "note": f"regenerate with: edgeloop baseline --out {out} --seed {seed} --epochs {epochs}",
    }
    tflite_path = out / "digits.tflite"
    write_atomic(tflite_path, exported.content)
    write_atomic(out / "digits.json", (json.dumps(meta, indent=2) + "\n").encode())
    logger.info("baseline %s written to %s", exported.sha256[:12], tflite_path)
    return tflite_path, meta
