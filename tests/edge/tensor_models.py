"""Tensor-input models for the edge tests, made by the cloud's own exporter.

Importing this module needs torch and ``cloud`` (the edge-only test run has
neither): the fixtures that use it skip there. Each family is trained briefly
on its example's generated data and exported to the all-int8 file the trainer
would publish, once per session.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.messages import ProbeSet
from shared.task import TaskSpec
from shared.tensors import TensorSpec


@dataclass(frozen=True)
class TensorModel:
    """An exported file with what its manifest says, and samples with truths."""

    name: str
    content: bytes
    input: TensorSpec
    task: TaskSpec
    probe: ProbeSet
    X: npt.NDArray[Any]
    y: npt.NDArray[Any]

    def manifest_fields(self) -> dict[str, Any]:
        """What ``helpers.make_manifest`` needs to describe this file."""
        return {
            "num_features": self.input.size,
            "labels": self.task.labels,
            "input": self.input,
            "task": self.task,
            "probe": self.probe,
        }


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def export_family(name: str, spec: str, dataset: str, n: int, epochs: int) -> TensorModel:
    """Train zoo model ``spec`` on ``dataset`` (a ``py:`` spec, its first ``n`` samples)
    for ``epochs`` and export it (the agreement with torch is not the point here, so
    the exporter asks for none beyond its probe)."""
    from cloud.data.datasets import load_dataset
    from cloud.export.exporter import export_int8
    from cloud.learning.training import Hyperparameters, bootstrap

    ds = load_dataset(dataset)
    ds = ds.subset(np.arange(min(n, len(ds.y))))
    trained = bootstrap(ds, Hyperparameters(epochs=epochs, batch_size=64, lr=3e-3, seed=0), spec)
    exported = export_int8(trained.model, ds.X[:200], ds.X[200:232], min_agreement=0.0)
    return TensorModel(name, exported.content, ds.input, ds.task, exported.probe, ds.X, ds.y)


def _example(name: str, n: int) -> dict[str, object]:
    """``n`` samples of examples/NAME's data generator, without its drift."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / name / "data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data: dict[str, object] = module.make(n=n, n_drift=1)
    return {k: v for k, v in data.items() if not k.endswith("_drift")}


def small_images() -> dict[str, object]:
    """A ``py:`` dataset: 600 conveyor frames (the example makes 6000, in seconds)."""
    return _example("images", 600)


def small_bearing() -> dict[str, object]:
    """A ``py:`` dataset: 600 sensor windows and temperatures."""
    return _example("regression", 600)


def image_model() -> TensorModel:
    """The depthwise CNN over 32x32x3 uint8 frames (examples/images)."""
    return export_family("images", "dwcnn", f"py:{__file__}:small_images", 600, 3)


def regression_model() -> TensorModel:
    """The regression MLP over [32, 4] sensor windows (examples/regression)."""
    return export_family("bearing", "regression_mlp", f"py:{__file__}:small_bearing", 600, 10)


def small_tabular() -> dict[str, object]:
    """A ``py:`` dataset: 400 rows of 12 sensor columns, 4 classes (what a CSV gives)."""
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=400, n_features=12, n_informative=6, n_classes=4, random_state=0
    )
    return {"X": (X * 10 + 50).astype(np.float32), "y": y}


def tabular_model() -> TensorModel:
    """The MLP over 12 float32 columns (its file can be resized to a batch)."""
    return export_family("tabular", "mlp", f"py:{__file__}:small_tabular", 400, 3)
