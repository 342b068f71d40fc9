"""A dataset's samples and truths, checked: what the input is and what the task is.

The task comes from ``y`` unless the user names it: integers, booleans or
strings are class labels (strings become the class names, sorted, numerically
when they are all numbers, so that "10" follows "9"); floats, ``[N]`` or
``[N, k]``, are regression targets. Samples keep uint8 as uint8 (camera frames);
any other numbers become float32.

>>> from cloud.data.sources import Arrays
>>> a = Arrays("toy", "toy.npz", np.zeros((4, 2, 3), np.uint8), np.array(["b", "a", "b", "c"]))
>>> c = checked(a, task=None)
>>> c.input.describe(), c.task.labels, c.y.tolist()
('[2, 3] uint8', ['a', 'b', 'c'], [1, 0, 1, 2])
>>> r = checked(Arrays("t", "t.npz", np.zeros((3, 4)), np.array([0.5, 1.0, 2.0])), task=None)
>>> r.task.kind, r.task.outputs, r.y.shape, r.input.describe()
('regression', ['y'], (3, 1), '[4] float32')
>>> checked(Arrays("t", "t.npz", np.zeros((3, 4)), np.array([0, 1, 7])), None, labels=["a", "b"])
Traceback (most recent call last):
...
cloud.data.sources.DatasetError: t.npz: y holds class 7 but labels names 2 classes (0..1)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.data.sources import Arrays, DatasetError, TaskKind
from shared.errors import InputError
from shared.task import TaskSpec
from shared.tensors import TensorSpec


@dataclass(frozen=True)
class Checked:
    """Samples ``[N, *input.shape]`` and truths (class indices int64 ``[N]``, or float32
    targets ``[N, k]``) that fit their specs."""

    X: npt.NDArray[Any]
    y: npt.NDArray[Any]
    input: TensorSpec
    task: TaskSpec
    X_drift: npt.NDArray[Any] | None = None
    y_drift: npt.NDArray[Any] | None = None


def checked(arrays: Arrays, task: TaskKind | None, labels: list[str] | None = None) -> Checked:
    """``arrays`` as a dataset's checked arrays; ``task`` overrides what ``y`` says,
    ``labels`` (if given) replaces the arrays' own."""
    if labels is not None:
        arrays = replace(arrays, labels=labels)
    where = arrays.where
    X, spec = samples(where, "X", arrays.X, arrays.input_shape)
    y, task_spec = _truths(arrays, task, len(X))
    X_drift = y_drift = None
    if (arrays.X_drift is None) != (arrays.y_drift is None):
        raise DatasetError(f"{where}: give both X_drift and y_drift, or neither")
    if arrays.X_drift is not None and arrays.y_drift is not None:
        X_drift, _ = samples(where, "X_drift", arrays.X_drift, tuple(spec.shape))
        if X_drift.dtype != X.dtype:
            X_drift = X_drift.astype(X.dtype)
        y_drift = truths_for(where, "y_drift", arrays.y_drift, task_spec, len(X_drift))
    return Checked(X, y, spec, task_spec, X_drift, y_drift)


def samples(
    where: str, key: str, X: npt.NDArray[Any], declared: tuple[int, ...] | None
) -> tuple[npt.NDArray[Any], TensorSpec]:
    """``X`` as a batch of one spec's samples: uint8 kept, other numbers as finite float32."""
    if X.ndim < 2:
        raise DatasetError(
            f"{where}: {key} must be [N, *input_shape] (one row per sample), got shape {list(X.shape)}"
        )
    if X.dtype.kind not in "biuf":
        raise DatasetError(f"{where}: {key} must hold numbers, got {X.dtype}")
    if len(X) == 0:
        raise DatasetError(f"{where}: {key} holds no samples")
    shape = tuple(int(d) for d in X.shape[1:])
    if declared is not None and shape != declared:
        raise DatasetError(
            f"{where}: {key} samples have shape {list(shape)}, the declared input shape is {list(declared)}"
        )
    dtype = "uint8" if X.dtype == np.uint8 else "float32"
    try:
        spec = TensorSpec(shape=list(shape), dtype=dtype).check()
    except (ValueError, InputError) as e:  # pydantic: more than 4 dimensions
        raise DatasetError(
            f"{where}: {key} samples of shape {list(shape)}: {_first_line(e)}"
        ) from e
    if dtype == "uint8":
        return np.ascontiguousarray(X), spec
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(X, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise DatasetError(
            f"{where}: {key} values must be finite float32 (found nan, inf or overflow)"
        )
    return out, spec


def _truths(arrays: Arrays, task: TaskKind | None, n: int) -> tuple[npt.NDArray[Any], TaskSpec]:
    where, y = arrays.where, arrays.y
    if len(y) != n:
        raise DatasetError(f"{where}: y has {len(y)} rows, X has {n}")
    kind = task or _kind_of(y)
    if kind == "regression":
        if y.dtype.kind in "US":
            raise DatasetError(f"{where}: task regression needs numeric targets in y, got strings")
        targets = _targets(where, "y", y)
        k = targets.shape[1]
        names = arrays.outputs or (["y"] if k == 1 else [f"y{i}" for i in range(k)])
        if len(names) != k:
            raise DatasetError(f"{where}: outputs names {len(names)} outputs, y has {k} per sample")
        return targets, TaskSpec.regression(names)
    return _classes(where, y, arrays.labels)


def _kind_of(y: npt.NDArray[Any]) -> TaskKind:
    return "regression" if y.dtype.kind == "f" else "classification"


def _classes(
    where: str, y: npt.NDArray[Any], labels: list[str] | None
) -> tuple[npt.NDArray[np.int64], TaskSpec]:
    """Class indices and names: ``labels`` name the indices in ``y``, or the distinct
    values of ``y`` become the classes."""
    if y.ndim != 1:
        raise DatasetError(
            f"{where}: class labels y must be one per sample ([N]), got shape {list(y.shape)}"
        )
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DatasetError(
                f"{where}: task classification needs whole-number or string labels in y"
            )
        y = y.astype(np.int64)
    if labels is not None:
        index = _indices_into(where, "y", y, labels)
        if len(labels) < 2:
            raise DatasetError(f"{where}: labels must name at least two classes")
        return index, TaskSpec.classification(labels)
    values = [str(v) for v in y.tolist()]
    names = sorted_labels(values)
    if y.dtype.kind in "iub" and names == [str(i) for i in range(len(names))]:
        found = y.astype(np.int64)  # already class indices 0..K-1
    else:
        position = {v: i for i, v in enumerate(names)}
        found = np.array([position[v] for v in values], np.int64)
    if len(names) < 2:
        raise DatasetError(f"{where}: the labels need at least two distinct values")
    return found, TaskSpec.classification(names)


def truths_for(
    where: str, key: str, y: npt.NDArray[Any], task: TaskSpec, n: int
) -> npt.NDArray[Any]:
    """``y`` as truths of ``task`` (e.g. a drift's labels): class names or indices of its
    labels, or targets of its width."""
    if len(y) != n:
        raise DatasetError(f"{where}: {key} has {len(y)} rows for {n} samples")
    if not task.is_classification:
        targets = _targets(where, key, y)
        if targets.shape[1] != task.width:
            raise DatasetError(
                f"{where}: {key} has {targets.shape[1]} targets per sample, y has {task.width}"
            )
        return targets
    if y.dtype.kind in "US":
        known = {name: i for i, name in enumerate(task.labels)}
        unknown = sorted({str(v) for v in y.tolist()} - set(known))
        if unknown:
            raise DatasetError(f"{where}: {key} holds labels {unknown[:3]} that y does not have")
        return np.array([known[str(v)] for v in y.tolist()], np.int64)
    return _indices_into(where, key, y, task.labels)


def _indices_into(
    where: str, key: str, y: npt.NDArray[Any], labels: list[str]
) -> npt.NDArray[np.int64]:
    if y.dtype.kind in "US":
        return truths_for(where, key, y, TaskSpec.classification(labels), len(y))
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):
        raise DatasetError(f"{where}: {key} must hold class indices (whole numbers)")
    index = y.astype(np.int64)
    bad = index[(index < 0) | (index >= len(labels))]
    if len(bad):
        raise DatasetError(
            f"{where}: {key} holds class {int(bad[0])} but labels names {len(labels)} classes "
            f"(0..{len(labels) - 1})"
        )
    return index


def _targets(where: str, key: str, y: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    if y.ndim not in (1, 2):
        raise DatasetError(
            f"{where}: regression targets {key} must be [N] or [N, k], got {list(y.shape)}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(y, np.float32).reshape(len(y), -1)
    if out.shape[1] == 0 or not np.all(np.isfinite(out)):
        raise DatasetError(f"{where}: regression targets {key} must be finite numbers")
    return np.ascontiguousarray(out)


def sorted_labels(values: list[str]) -> list[str]:
    """Distinct values, numerically sorted when they are all numbers."""
    distinct = set(values)
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return sorted(distinct)


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[-1].strip() if lines else type(e).__name__
