"""Datasets the loop runs on: scikit-learn's digits, a CSV, an ``.npz`` file or a Python function.

A dataset is samples of one ``TensorSpec`` (``X``: ``[N, *input.shape]``, float32
or uint8) with truths of one ``TaskSpec`` (``y``: class indices int64 ``[N]``, or
float32 targets ``[N, k]``), and optionally the same concept after a drift
(``X_drift``, ``y_drift``). Samples stay raw (digits: pixels 0..16; CSV: the
numbers in the file; frames: uint8) because normalization is the model's first
op: a version is self-contained and the edges pass what their sensors give them.

Specs: ``digits``, ``csv:PATH``, ``npz:PATH``, ``py:module:function``
(``cloud.data.sources``); the task comes from ``y`` unless ``task`` names it
(``cloud.data.truths``). A bad spec is a ``DatasetError`` naming the file and
what was expected.

>>> ds = load_dataset("digits")
>>> ds.kind, ds.num_features, ds.num_classes, ds.X.dtype.name, ds.input.describe()
('digits', 64, 10, 'float32', '[64] float32')
>>> parts = split(ds, seed=0)
>>> len(parts.seed_train.y) + len(parts.seed_holdout.y) + len(parts.stream.y) == len(ds.y)
True
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cloud.data.sources import DatasetError, TaskKind, read_csv, read_npz, read_py
from cloud.data.truths import checked
from shared.task import TaskSpec
from shared.tensors import TensorSpec

__all__ = ["Dataset", "DatasetError", "Split", "drift", "load_dataset", "split"]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
#: digits: the 8x8 digits; tabular: flat samples ([F]); tensor: windows, images ([T, C], [H, W, C]).
Kind = Literal["digits", "tabular", "tensor"]

#: Shares of a dataset for the bootstrap's training set and the seed holdout; the
#: rest is the stream pool the demo's simulated apps draw from.
SEED_TRAIN_SHARE = 0.3
SEED_HOLDOUT_SHARE = 0.1
#: A whole-dataset seed split holds out every HOLDOUT_EVERY-th row (the trainer's
#: default for feedback, ``holdout_every``).
HOLDOUT_EVERY = 5

SPECS = '"digits", "csv:PATH", "npz:PATH" or "py:module:function"'


@dataclass(frozen=True)
class Dataset:
    """Samples of ``input`` with truths of ``task``; ``labels[i]`` names class ``i``."""

    name: str
    kind: Kind
    X: npt.NDArray[Any]  # [N, *input.shape], float32 or uint8
    y: npt.NDArray[Any]  # int64 [N] (classification) or float32 [N, k] (regression)
    input: TensorSpec
    task: TaskSpec
    X_drift: npt.NDArray[Any] | None = None  # the concept after a drift, if the data has one
    y_drift: npt.NDArray[Any] | None = None

    @property
    def labels(self) -> list[str]:
        """Class names ([] for a regression)."""
        return self.task.labels

    @property
    def num_features(self) -> int:
        """Values in one sample."""
        return self.input.size

    @property
    def num_classes(self) -> int:
        return len(self.task.labels)

    def subset(self, index: npt.NDArray[np.intp]) -> Dataset:
        return replace(self, X=self.X[index], y=self.y[index])


@dataclass(frozen=True)
class Split:
    """The three disjoint parts of a dataset the loop uses."""

    seed_train: Dataset
    seed_holdout: Dataset
    stream: Dataset


def load_dataset(
    spec: str, label_column: str | None = None, task: TaskKind | None = None
) -> Dataset:
    """The dataset ``spec`` names; ``label_column`` picks a CSV's label column (default:
    the last), ``task`` overrides what the labels say."""
    if spec == "digits":
        return _digits()
    kind, _, rest = spec.partition(":")
    if not rest:
        raise DatasetError(f"dataset {spec!r}: use {SPECS}")
    if kind == "csv":
        arrays = read_csv(Path(rest), label_column, task)
    elif kind == "npz":
        arrays = read_npz(Path(rest))
    elif kind == "py":
        arrays = read_py(rest)
    else:
        raise DatasetError(f"dataset {spec!r}: use {SPECS}")
    data = checked(arrays, task)
    return Dataset(
        name=arrays.name,
        kind="tabular" if len(data.input.shape) == 1 else "tensor",
        X=data.X,
        y=data.y,
        input=data.input,
        task=data.task,
        X_drift=data.X_drift,
        y_drift=data.y_drift,
    )


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    return Dataset(
        name="digits",
        kind="digits",
        X=np.ascontiguousarray(d.data, dtype=np.float32),
        y=d.target.astype(np.int64),
        input=TensorSpec.flat(64),
        task=TaskSpec.classification([str(c) for c in range(10)]),
    )


def split(dataset: Dataset, seed: int, *, whole: bool = False) -> Split:
    """Seed-train / seed-holdout / stream pool, deterministic in ``seed`` and stratified
    by class for a classification.

    The trainer bootstraps from ``seed_train`` and seeds its holdout with
    ``seed_holdout``; simulated apps draw from ``stream``, which neither has seen.

    ``whole``: the dataset is all seed data, in its order (``edgeloop replay`` gives
    the trainer a stream's first rows): every ``HOLDOUT_EVERY``-th row is held out,
    the others are trained on, and the stream pool is empty.

    >>> parts = split(load_dataset("digits").subset(np.arange(10)), 0, whole=True)
    >>> len(parts.seed_train.y), len(parts.seed_holdout.y), len(parts.stream.y)
    (8, 2, 0)
    """
    if whole:
        index = np.arange(len(dataset.y))
        held = index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
        return Split(
            seed_train=dataset.subset(index[~held]),
            seed_holdout=dataset.subset(index[held]),
            stream=dataset.subset(index[:0]),
        )
    from sklearn.model_selection import train_test_split

    index = np.arange(len(dataset.y))
    classes = dataset.task.is_classification
    stratify = dataset.y if classes and np.bincount(dataset.y).min() >= 3 else None
    seed_idx, stream_idx = train_test_split(
        index,
        train_size=SEED_TRAIN_SHARE + SEED_HOLDOUT_SHARE,
        random_state=seed,
        stratify=stratify,
    )
    inner = dataset.y[seed_idx] if stratify is not None else None
    train_idx, holdout_idx = train_test_split(
        seed_idx,
        test_size=SEED_HOLDOUT_SHARE / (SEED_TRAIN_SHARE + SEED_HOLDOUT_SHARE),
        random_state=seed,
        stratify=inner,
    )
    return Split(
        seed_train=dataset.subset(np.sort(train_idx)),
        seed_holdout=dataset.subset(np.sort(holdout_idx)),
        stream=dataset.subset(np.sort(stream_idx)),
    )


def drift(kind: Kind) -> Callable[[FloatArray], FloatArray]:
    """An abrupt-drift transform of raw features, for demos and tests.

    - digits: every 8x8 image is rotated by 90 degrees.
    - tabular: each column is standardized with the statistics of the array
      given, then the columns are negated and rotated by one place (column j
      takes column j+1's values, mirrored around the mean) and put back in the
      units of column j. Every marginal range stays plausible while every
      learned relation breaks. Call it on a whole pool, not one row, so that
      the statistics mean something.

    Tensor datasets bring their own drift (``X_drift``, ``y_drift``).

    >>> rot = drift("digits")
    >>> x = np.arange(64, dtype=np.float32)[None, :]
    >>> rot(x)[0, :8].tolist()
    [7.0, 15.0, 23.0, 31.0, 39.0, 47.0, 55.0, 63.0]
    """
    if kind == "digits":
        return _rotate_digits
    if kind == "tabular":
        return _mirror_and_rotate_columns
    raise ValueError(f"no drift for dataset kind {kind!r}")


def _rotate_digits(X: FloatArray) -> FloatArray:
    images = np.asarray(X, np.float32).reshape(-1, 8, 8)
    return np.ascontiguousarray(np.rot90(images, k=1, axes=(1, 2)).reshape(-1, 64))


def _mirror_and_rotate_columns(X: FloatArray) -> FloatArray:
    X = np.asarray(X, np.float32)
    mean: FloatArray = X.mean(axis=0)
    std: FloatArray = X.std(axis=0)
    std[std < 1e-6] = 1.0
    z = (X - mean) / std
    moved = -np.roll(z, shift=-1, axis=1)
    return (moved * std + mean).astype(np.float32)
