"""Datasets the loop runs on: scikit-learn's digits, or any tabular CSV.

Features stay raw (digits: pixels 0..16; CSV: the numbers in the file) because
normalization is the model's first op: a version is self-contained and the
edges pass what their sensors give them.

>>> ds = load_dataset("digits")
>>> ds.kind, ds.num_features, ds.num_classes, ds.X.dtype.name
('digits', 64, 10, 'float32')
>>> parts = split(ds, seed=0)
>>> len(parts.seed_train.y) + len(parts.seed_holdout.y) + len(parts.stream.y) == len(ds.y)
True
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from shared.errors import ConfigError

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
Kind = Literal["digits", "tabular"]

#: Shares of a dataset for the bootstrap's training set and the seed holdout; the
#: rest is the stream pool the demo's simulated apps draw from.
SEED_TRAIN_SHARE = 0.3
SEED_HOLDOUT_SHARE = 0.1


class DatasetError(ConfigError):
    """A dataset spec or file cannot be used (missing column, non-numeric data, ...)."""


@dataclass(frozen=True)
class Dataset:
    """Samples with class indices; ``labels[i]`` names class ``i``."""

    name: str
    kind: Kind
    X: FloatArray
    y: IntArray
    labels: list[str]

    @property
    def num_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def subset(self, index: npt.NDArray[np.intp]) -> Dataset:
        return replace(self, X=self.X[index], y=self.y[index])


@dataclass(frozen=True)
class Split:
    """The three disjoint parts of a dataset the loop uses."""

    seed_train: Dataset
    seed_holdout: Dataset
    stream: Dataset


def load_dataset(spec: str, label_column: str | None = None) -> Dataset:
    """``"digits"`` or ``"csv:PATH"`` (label column: ``label_column``, else the last)."""
    if spec == "digits":
        return _digits()
    if spec.startswith("csv:") and len(spec) > 4:
        return load_csv(Path(spec[4:]), label_column)
    raise DatasetError(f'dataset {spec!r}: use "digits" or "csv:PATH"')


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    return Dataset(
        name="digits",
        kind="digits",
        X=np.ascontiguousarray(d.data, dtype=np.float32),
        y=d.target.astype(np.int64),
        labels=[str(c) for c in range(10)],
    )


def load_csv(path: Path, label_column: str | None = None) -> Dataset:
    """A CSV with a header: numeric feature columns and one label column.

    Labels become class indices in the sorted order of their distinct values
    (numerically when every label is a number, so that "10" follows "9").
    """
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror}") from e
    except (csv.Error, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not a readable CSV: {e}") from e
    if len(rows) < 2:
        raise DatasetError(f"{path}: needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    label_at = _label_index(path, header, label_column)
    feature_at = [i for i in range(len(header)) if i != label_at]
    if not feature_at:
        raise DatasetError(f"{path}: no feature columns besides the label {header[label_at]!r}")
    X = np.empty((len(rows) - 1, len(feature_at)), np.float32)
    raw_labels = []
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DatasetError(f"{path} line {r}: {len(row)} fields, the header has {len(header)}")
        for j, i in enumerate(feature_at):
            try:
                X[r - 2, j] = float(row[i])
            except ValueError as e:
                raise DatasetError(
                    f"{path} line {r}: column {header[i]!r} is not numeric ({row[i]!r}); "
                    "feature columns must hold numbers"
                ) from e
        raw_labels.append(row[label_at].strip())
    if not np.all(np.isfinite(X)):
        raise DatasetError(f"{path}: feature values must be finite (found nan or inf)")
    labels = _sorted_labels(raw_labels)
    if len(labels) < 2:
        raise DatasetError(f"{path}: the label column needs at least two distinct values")
    index = {v: i for i, v in enumerate(labels)}
    y = np.array([index[v] for v in raw_labels], np.int64)
    return Dataset(name=path.stem, kind="tabular", X=X, y=y, labels=labels)


def _label_index(path: Path, header: list[str], label_column: str | None) -> int:
    if label_column is None:
        return len(header) - 1
    if label_column not in header:
        raise DatasetError(f"{path}: no column {label_column!r}; columns are {', '.join(header)}")
    return header.index(label_column)


def _sorted_labels(values: list[str]) -> list[str]:
    distinct = set(values)
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return sorted(distinct)


def split(dataset: Dataset, seed: int) -> Split:
    """Seed-train / seed-holdout / stream pool, stratified and deterministic in ``seed``.

    The trainer bootstraps from ``seed_train`` and seeds its holdout with
    ``seed_holdout``; simulated apps draw from ``stream``, which neither has seen.
    """
    from sklearn.model_selection import train_test_split

    index = np.arange(len(dataset.y))
    stratify = dataset.y if np.bincount(dataset.y).min() >= 3 else None
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
