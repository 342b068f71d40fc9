"""What the demo runs: a model and a dataset, checked before anything starts.

The user names them three ways:

- nothing: the digits and their CNN (``--dataset csv:PATH`` alone: the CSV with
  the zoo's MLP);
- ``--model SPEC --dataset SPEC``: a zoo name or an import spec
  (``my_model.py:build``, ``mypkg.models:build``; ``cloud.learning.contract``) and
  a dataset spec (``csv:``, ``npz:``, ``py:``; ``cloud.data.datasets``);
- ``--example NAME``: one of the shipped examples, ``examples/NAME/data.py``
  (``make(seed, n, n_drift)``) and ``examples/NAME/model.py`` (``build(info)``).
  The example's data is generated into the demo's work dir as an ``.npz`` file,
  which is what the trainer process reads.

``prepare`` loads the dataset, builds the model on the seed split exactly as the
trainer will, and exports it once to an all-int8 file, so that a spec that does
not import, a module that does not fit the task, data that does not fit, or a
model with no int8 kernel for one of its ops is one ``ConfigError`` line (exit 2)
before redis, the trainer or an edge is started.

The drift: an example or an ``.npz`` with ``X_drift``/``y_drift`` brings its own
concept after the drift, and the apps switch to it half-way. Without one, the
digits are rotated, and flat or tensor samples get the mirrored-features
transform (``cloud.data.datasets.drift``).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.data.datasets import Dataset, DatasetError, drift, load_dataset, split
from cloud.data.import_spec import is_import_spec
from cloud.data.sources import TaskKind
from shared.errors import ConfigError

logger = logging.getLogger(__name__)

#: The shipped examples live next to the packages, in the repository's examples/ folder.
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
EXAMPLES = ("vibration", "regression", "images")

#: Samples an example generates before and after its drift (quick runs need fewer).
EXAMPLE_SAMPLES = 3000
EXAMPLE_SAMPLES_QUICK = 1500

#: Samples the export check quantizes the fresh model with (the trainer's default).
CALIBRATION_SAMPLES = 200


class ExampleError(ConfigError):
    """``--example NAME`` names no shipped example, or its files are broken."""


@dataclass(frozen=True)
class WorkloadRequest:
    """What the user asked for on the command line."""

    dataset: str = "digits"
    model: str | None = None
    example: str | None = None
    label_column: str | None = None
    task: TaskKind | None = None
    seed: int = 0
    quick: bool = False


@dataclass(frozen=True)
class Workload:
    """A checked model and dataset, and what the trainer's config says of them."""

    name: str  # the model's name in the fleet (keys, versions, the edges' config)
    model: str  # the trainer's ``model`` setting: a zoo name or an import spec
    dataset_spec: str  # the trainer's ``dataset`` setting
    dataset: Dataset
    label_column: str | None
    task: TaskKind | None
    drift_name: str  # what changes at the drift, for the live view

    @property
    def has_own_drift(self) -> bool:
        return self.dataset.X_drift is not None

    def drift_samples(
        self, X: npt.NDArray[Any], y: npt.NDArray[Any]
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """The samples the apps send after the drift, with their truths: the dataset's own
        drift concept, or ``X`` (the stream pool) transformed."""
        if self.dataset.X_drift is not None and self.dataset.y_drift is not None:
            return self.dataset.X_drift, self.dataset.y_drift
        if self.dataset.kind in ("digits", "tabular"):
            return drift(self.dataset.kind)(X), y
        return mirrored_tensor(X), y


def prepare(request: WorkloadRequest, workdir: Path) -> Workload:
    """Load and check the dataset and the model (``ConfigError`` on any bad input)."""
    dataset_spec, model = (
        _example(request, workdir)
        if request.example is not None
        else (request.dataset, request.model)
    )
    dataset = load_dataset(dataset_spec, request.label_column, request.task)
    if dataset.X_drift is None and dataset.kind == "tensor":
        logger.info("%s has no X_drift: the demo mirrors its features at the drift", dataset.name)
    spec = _model_setting(model, dataset)
    check_model(spec, dataset, request.seed)
    return Workload(
        name=fleet_model_name(request, model, dataset),
        model=spec,
        dataset_spec=dataset_spec,
        dataset=dataset,
        label_column=request.label_column,
        task=request.task,
        drift_name=_drift_name(request, dataset),
    )


def check_model(spec: str, dataset: Dataset, seed: int) -> None:
    """Build ``spec`` on the seed split as the trainer does (``ModelError``), then export
    it once: a model that can never be an all-int8 file is refused now (``ModelError``)."""
    # imported here: torch and the converter take seconds to import, and the CLI's
    # argument errors must not wait for them
    from cloud.export.errors import ExportError
    from cloud.export.exporter import preflight
    from cloud.learning.contract import DataInfo, ModelError, build_model

    seed_train = split(dataset, seed).seed_train
    model = build_model(spec, DataInfo.of(seed_train), seed=seed)
    try:
        preflight(model, seed_train.X[:CALIBRATION_SAMPLES])
    except ExportError as e:
        raise ModelError(f"model {spec!r} cannot be published as an all-int8 file: {e}") from e


def _model_setting(model: str | None, dataset: Dataset) -> str:
    from cloud.learning.zoo import ZOO, default_model

    if model is None:
        return default_model(dataset)
    if model not in ZOO and not is_import_spec(model):
        from cloud.learning.contract import ModelError

        raise ModelError(
            f"model {model!r}: not a zoo model ({', '.join(sorted(ZOO))}) nor an import spec "
            "'module:function' or 'path/to/file.py:function'"
        )
    return model


def fleet_model_name(request: WorkloadRequest, model: str | None, dataset: Dataset) -> str:
    """A readable name for the model in the fleet: the example's, the model file's stem,
    the module's last part, the zoo name, or (no model given) the dataset's."""
    if request.example is not None:
        name = request.example
    elif model is not None and is_import_spec(model):
        where = model.rpartition(":")[0]
        name = Path(where).stem if where.endswith(".py") else where.rpartition(".")[2]
    elif model is not None:
        name = model
    elif dataset.kind == "digits":
        name = "digits"
    else:
        name = f"{dataset.kind if dataset.kind == 'tensor' else 'csv'}-{dataset.name}"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:64] or "model"


def _drift_name(request: WorkloadRequest, dataset: Dataset) -> str:
    if dataset.X_drift is not None:
        return f"{request.example or dataset.name}'s drift concept"
    if dataset.kind == "digits":
        return "digits rotated 90°"
    return "features mirrored"


# -- examples ---------------------------------------------------------------------------


def example_files(name: str) -> tuple[Path, Path]:
    """``examples/NAME/data.py`` and ``model.py``."""
    folder = EXAMPLES_DIR / name
    data, model = folder / "data.py", folder / "model.py"
    if name not in EXAMPLES or not data.is_file() or not model.is_file():
        raise ExampleError(
            f"example {name!r}: expected {', '.join(EXAMPLES)} "
            f"(with data.py and model.py in {EXAMPLES_DIR})"
        )
    return data, model


def _example(request: WorkloadRequest, workdir: Path) -> tuple[str, str | None]:
    """Generate the example's data into ``workdir``: its dataset spec and model spec."""
    assert request.example is not None
    data_py, model_py = example_files(request.example)
    make = load_make(data_py)
    n = EXAMPLE_SAMPLES_QUICK if request.quick else EXAMPLE_SAMPLES
    try:
        arrays = make(seed=request.seed, n=n, n_drift=n)
    except Exception as e:  # the example's generator failed
        raise ExampleError(f"{data_py}: make() raised {type(e).__name__}: {e}") from e
    path = workdir / f"{request.example}.npz"
    arrays = {k: np.asarray(v) for k, v in dict(arrays).items()}
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    return f"npz:{path}", f"{model_py}:build"


def load_make(data_py: Path) -> Any:
    """The ``make`` function of an example's ``data.py``, loaded from its file."""
    module_spec = importlib.util.spec_from_file_location(
        f"edgeloop_example_{data_py.parent.name}", data_py
    )
    if module_spec is None or module_spec.loader is None:
        raise ExampleError(f"{data_py}: not importable")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # a broken example file
        raise ExampleError(f"{data_py}: import failed: {type(e).__name__}: {e}") from e
    make = getattr(module, "make", None)
    if not callable(make):
        raise ExampleError(f"{data_py}: expected a function make(seed, n, n_drift)")
    return make


# -- the drift for a tensor dataset without its own --------------------------------------


def mirrored_tensor(X: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The mirrored-features drift over a tensor's values (each value standardized over
    the pool, negated, and moved to the next position), in the samples' dtype.

    >>> X = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    >>> D = mirrored_tensor(X)
    >>> D.shape, D.dtype.name
    ((3, 2, 2), 'uint8')
    """
    flat = np.asarray(X, np.float32).reshape(len(X), -1)
    moved = drift("tabular")(flat).reshape(X.shape)
    if X.dtype == np.uint8:
        return np.clip(np.rint(moved), 0, 255).astype(np.uint8)
    return moved.astype(X.dtype)


__all__ = [
    "EXAMPLES",
    "DatasetError",
    "ExampleError",
    "Workload",
    "WorkloadRequest",
    "check_model",
    "example_files",
    "prepare",
]
