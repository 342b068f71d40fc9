"""Where a dataset's arrays come from: a CSV file, an ``.npz`` file, or a Python function.

Each reader returns the arrays as the user gave them (``Arrays``); turning them
into samples of one ``TensorSpec`` and truths of one ``TaskSpec`` is
``cloud.data.truths``. Every problem is a ``DatasetError``: one line naming the
file (or spec) and what was expected.

- ``csv:PATH``: a header, numeric feature columns and one label column (the
  last unless named). Labels are class names, except a column of numbers that
  are not all whole (or ``task = "regression"``): then the column is the one
  output of a regression, named after it.
- ``npz:PATH``: arrays ``X`` ``[N, *input_shape]`` and ``y``; optional ``labels``
  (class names), ``outputs`` (output names), ``input_shape`` (checked against
  ``X``), ``X_drift`` and ``y_drift`` (the concept after a drift).
- ``py:module:function`` (or ``py:path/file.py:function``): the function, called
  without arguments, returns a mapping with the same keys.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cloud.data.import_spec import ImportSpecError, function_name, load_function
from shared.errors import ConfigError

TaskKind = Literal["classification", "regression"]

#: Keys an npz file or a ``py:`` function may give; X and y are required.
KEYS = ("X", "y", "labels", "outputs", "input_shape", "X_drift", "y_drift")


class DatasetError(ConfigError):
    """A dataset spec or file cannot be used (missing column, non-numeric data, ...)."""


@dataclass(frozen=True)
class Arrays:
    """A dataset as the user gave it, before its task and input spec are settled."""

    name: str  # the dataset's name: a file's stem, a function's name
    where: str  # what errors name: the file or the spec
    X: npt.NDArray[Any]
    y: npt.NDArray[Any]
    labels: list[str] | None = None
    outputs: list[str] | None = None
    input_shape: tuple[int, ...] | None = None
    X_drift: npt.NDArray[Any] | None = None
    y_drift: npt.NDArray[Any] | None = None


# -- csv ------------------------------------------------------------------------------


def read_csv(path: Path, label_column: str | None, task: TaskKind | None) -> Arrays:
    """A CSV with a header: numeric feature columns and one label column."""
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
    column = header[label_at]
    targets = _targets(raw_labels, task)
    if targets is not None:
        return Arrays(path.stem, str(path), X, targets, outputs=[column])
    if task == "regression":
        raise DatasetError(f"{path}: task regression needs numbers in column {column!r}")
    return Arrays(path.stem, str(path), X, np.asarray(raw_labels, dtype=str))


def _label_index(path: Path, header: list[str], label_column: str | None) -> int:
    if label_column is None:
        return len(header) - 1
    if label_column not in header:
        raise DatasetError(f"{path}: no column {label_column!r}; columns are {', '.join(header)}")
    return header.index(label_column)


def _targets(values: list[str], task: TaskKind | None) -> npt.NDArray[np.float32] | None:
    """The label column as regression targets ``[N, 1]``, or None when it holds class names:
    it does unless every value is a number and some are not whole (or the task says so)."""
    if task == "classification":
        return None
    try:
        numbers = np.array([float(v) for v in values], np.float64)
    except ValueError:
        return None
    if task != "regression" and np.all(numbers == np.round(numbers)):
        return None
    return numbers.astype(np.float32).reshape(-1, 1)


# -- npz and py -----------------------------------------------------------------------


def read_npz(path: Path) -> Arrays:
    """Arrays ``X`` and ``y`` (and the optional ones of ``KEYS``) from an ``.npz`` file."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            found = {k: np.asarray(npz[k]) for k in npz.files}
    except FileNotFoundError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror}") from e
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DatasetError(f"{path} is not a readable .npz file (np.savez): {e}") from e
    return _from_mapping(path.stem, str(path), found)


def read_py(spec: str) -> Arrays:
    """Call the function ``spec`` names; it returns a mapping with the keys of ``KEYS``."""
    try:
        make = load_function(spec, what="dataset")
    except ImportSpecError as e:
        raise DatasetError(str(e)) from e
    try:
        found = make()
    except Exception as e:  # the user's function failed
        raise DatasetError(f"dataset py:{spec}: calling it failed: {type(e).__name__}: {e}") from e
    if not isinstance(found, Mapping):
        raise DatasetError(
            f"dataset py:{spec}: returned a {type(found).__name__}; expected a mapping "
            "with X and y (and optionally labels, outputs, X_drift, y_drift)"
        )
    return _from_mapping(function_name(spec), f"py:{spec}", dict(found))


def _from_mapping(name: str, where: str, found: dict[str, Any]) -> Arrays:
    missing = [k for k in ("X", "y") if k not in found]
    if missing:
        raise DatasetError(
            f"{where}: no {' or '.join(missing)}; expected arrays X [N, *input_shape] and y [N] "
            f"(has: {', '.join(sorted(found)) or 'nothing'})"
        )
    unknown = sorted(set(found) - set(KEYS))
    if unknown:
        raise DatasetError(f"{where}: unknown keys {unknown}; expected {', '.join(KEYS)}")
    shape = found.get("input_shape")
    return Arrays(
        name=name,
        where=where,
        X=_array(where, "X", found["X"]),
        y=_array(where, "y", found["y"]),
        labels=_names(where, "labels", found.get("labels")),
        outputs=_names(where, "outputs", found.get("outputs")),
        input_shape=None if shape is None else _shape(where, shape),
        X_drift=None
        if found.get("X_drift") is None
        else _array(where, "X_drift", found["X_drift"]),
        y_drift=None
        if found.get("y_drift") is None
        else _array(where, "y_drift", found["y_drift"]),
    )


def _array(where: str, key: str, value: Any) -> npt.NDArray[Any]:
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{where}: {key} is not an array: {e}") from e
    if arr.dtype.kind not in "biufUS":
        raise DatasetError(
            f"{where}: {key} must hold numbers (or, for y, strings); got {arr.dtype}"
        )
    return arr


def _names(where: str, key: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.ndim != 1 or len(arr) == 0:
        raise DatasetError(f"{where}: {key} must be a list of names, got shape {list(arr.shape)}")
    return [str(v) for v in arr.tolist()]


def _shape(where: str, value: Any) -> tuple[int, ...]:
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or not np.all(arr > 0):
        raise DatasetError(f"{where}: input_shape must be positive integers, got {arr.tolist()}")
    return tuple(int(v) for v in arr)
