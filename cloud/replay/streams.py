"""The rows ``edgeloop replay`` streams, in order, and where their concept changes.

Specs: every dataset spec the project takes (``csv:PATH``, ``npz:PATH``,
``py:module:function``, ``digits``; ``cloud.data.datasets``), in file order, and
``river:NAME``, one of River's synthetic generators with known drifts or its
bundled data sets (no download; river is imported only here and in the baselines):

- ``sea`` / ``sea-gradual``: SEA, variant 0 then 3 (``ConceptDriftStream``), abrupt
  or over a tenth of the stream;
- ``agrawal`` / ``agrawal-gradual``: Agrawal, function 0 then 2;
- ``led``: LED, then LED with 7 of its segments swapped (``LEDDrift``), abrupt;
- ``stagger``: STAGGER 0, 1, then 0 again (a recurring concept);
- ``hyperplane``: a rotating hyperplane (incremental drift, no single position);
- ``phishing``, ``bananas``: River's bundled real/benchmark data, no known drift.

An ``.npz`` (or ``py:``) with ``X_drift``/``y_drift`` is streamed as ``X`` then the
drift concept, with a known drift where it starts. Only classification streams
are replayed: prequential accuracy is what the command compares.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.data.datasets import load_dataset
from cloud.data.sources import DatasetError

#: Rows a synthetic river stream has (``--quick``: fewer, for tests).
RIVER_ROWS = 12_000
RIVER_ROWS_QUICK = 2_000

RIVER_STREAMS = (
    "sea",
    "sea-gradual",
    "agrawal",
    "agrawal-gradual",
    "led",
    "stagger",
    "hyperplane",
    "phishing",
    "bananas",
)


@dataclass(frozen=True)
class Stream:
    """Rows in arrival order: ``X`` float32 [N, F], ``y`` class indices int64 [N]."""

    name: str
    X: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    labels: list[str]
    #: row positions where a known concept change starts (a gradual one: its centre)
    drifts: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)


def load_stream(spec: str, label_column: str | None, *, seed: int, quick: bool) -> Stream:
    """The stream ``spec`` names (``DatasetError`` on anything that does not fit)."""
    kind, _, name = spec.partition(":")
    if kind == "river":
        return river_stream(name, seed=seed, rows=RIVER_ROWS_QUICK if quick else RIVER_ROWS)
    ds = load_dataset(spec, label_column, "classification")
    if ds.kind == "tensor":
        raise DatasetError(f"dataset {spec!r}: replay takes flat rows, not {ds.input.describe()}")
    X, y, drifts = ds.X, ds.y, []
    if ds.X_drift is not None and ds.y_drift is not None:
        drifts = [len(y)]
        X, y = np.concatenate([X, ds.X_drift]), np.concatenate([y, ds.y_drift])
    return Stream(ds.name, np.asarray(X, np.float32), np.asarray(y, np.int64), ds.labels, drifts)


def river_stream(name: str, *, seed: int, rows: int) -> Stream:
    """``rows`` rows of River's stream ``name`` (bundled data sets: all their rows)."""
    if name not in RIVER_STREAMS:
        raise DatasetError(f"dataset river:{name}: expected one of {', '.join(RIVER_STREAMS)}")
    try:
        from river import datasets
        from river.datasets import synth
    except ImportError as e:
        raise DatasetError(
            "river:… streams need River: pip install river (edgeloop's dev extra)"
        ) from e
    half, third = rows // 2, rows // 3
    source: Iterable[tuple[dict[Any, Any], Any]]
    drifts: list[int] = []
    if name in ("sea", "sea-gradual", "agrawal", "agrawal-gradual", "led"):
        before, after = _concepts(synth, name.partition("-")[0], seed)
        if name.endswith("-gradual"):
            # River's sigmoid switch: the drift concept's share goes 0 to 1 over ``width``
            source = synth.ConceptDriftStream(
                before, after, position=half, width=rows // 10, seed=seed
            )
        else:  # abrupt: the next concept from row ``half`` on
            source = _concat([(before, half), (after, rows - half)])
        drifts = [half]
    elif name == "stagger":
        source = _concat(
            [
                (synth.STAGGER(classification_function=0, seed=seed), third),
                (synth.STAGGER(classification_function=1, seed=seed + 1), third),
                (synth.STAGGER(classification_function=0, seed=seed + 2), rows - 2 * third),
            ]
        )
        drifts = [third, 2 * third]
    elif name == "hyperplane":
        source = synth.Hyperplane(seed=seed, n_features=10, n_drift_features=5, mag_change=0.001)
    elif name == "phishing":
        source, rows = datasets.Phishing(), 10**9
    else:
        source, rows = datasets.Bananas(), 10**9  # type: ignore[no-untyped-call]
    return _rows(f"river-{name}", itertools.islice(source, rows), drifts)


def _concepts(synth: Any, family: str, seed: int) -> tuple[Any, Any]:
    """The generators before and after a drift of ``family``."""
    if family == "sea":
        return synth.SEA(variant=0, seed=seed), synth.SEA(variant=3, seed=seed + 1)
    if family == "agrawal":
        return (
            synth.Agrawal(classification_function=0, seed=seed),
            synth.Agrawal(classification_function=2, seed=seed + 1),
        )
    return (
        synth.LED(seed=seed, noise_percentage=0.1),
        synth.LEDDrift(seed=seed + 1, noise_percentage=0.1, n_drift_features=7),
    )


def _concat(parts: list[tuple[Iterable[Any], int]]) -> Iterable[Any]:
    for source, n in parts:
        yield from itertools.islice(source, n)


def _rows(name: str, pairs: Iterable[tuple[dict[Any, Any], Any]], drifts: list[int]) -> Stream:
    xs: list[list[float]] = []
    ys: list[str] = []
    keys: list[Any] | None = None
    for x, y in pairs:
        keys = keys if keys is not None else list(x)
        xs.append([float(x[k]) for k in keys])
        ys.append(str(y))
    labels = sorted(set(ys), key=_label_order)
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[v] for v in ys], np.int64)
    return Stream(name, np.array(xs, np.float32), y, labels, drifts)


def _label_order(label: str) -> tuple[int, float | str]:
    """Numeric labels in numeric order, then the rest by name."""
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


def describe(stream: Stream) -> str:
    drifts = ", ".join(map(str, stream.drifts)) or "none known"
    return f"{stream.name}: {len(stream)} rows, {stream.X.shape[1]} features, {len(stream.labels)} classes, drifts at {drifts}"


__all__ = ["RIVER_STREAMS", "Stream", "describe", "load_stream", "river_stream"]
