"""The model contract: what a user's model is, and the checks it passes before anything runs.

A model is a zoo name (``cloud.learning.zoo``) or an import spec,
``module:function`` or ``path/to/file.py:function``. The function receives a
``DataInfo`` (the input's ``TensorSpec``, the ``TaskSpec``, and the seed data for
normalization statistics) and returns a ``torch.nn.Module`` that maps a float32
batch of raw inputs ``[N, *input_shape]`` to logits ``[N, classes]``
(classification) or outputs ``[N, k]`` (regression). Normalization stays inside
the module, so a version is self-contained and edges pass raw sensor values.

``build_model`` calls the function with torch's RNG seeded, checks the result
right away (a module, the right output shape on two seed samples, finite
numbers) and wraps it in ``TaskModel`` (``cloud.learning.models``). Each failure
is one ``ModelError`` line naming the spec.

>>> import torch
>>> from cloud.data.datasets import load_dataset
>>> info = DataInfo.of(load_dataset("digits"))
>>> info.input_shape, info.task.metric, len(info.X)
((64,), 'accuracy', 1797)
>>> m = build_model("digits", info, seed=0)
>>> tuple(m(torch.zeros(2, 64)).shape)
(2, 10)
>>> build_model("math:sqrt", info, seed=0)
Traceback (most recent call last):
...
cloud.learning.contract.ModelError: model 'math:sqrt': sqrt(info) raised TypeError: must be real number, not DataInfo
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cloud.data.datasets import Dataset
from cloud.data.import_spec import ImportSpecError, function_name, is_import_spec, load_function
from cloud.learning.models import TaskModel
from shared.errors import ConfigError
from shared.task import TaskSpec
from shared.tensors import TensorSpec

#: Seed samples a module is tried on when it is built.
CHECK_SAMPLES = 2


class ModelError(ConfigError):
    """A model spec does not give a module edgeloop can train (one line, naming the spec)."""


@dataclass(frozen=True)
class DataInfo:
    """What a model's builder knows of the data: input, task, and the seed samples
    (raw, ``[N, *input_shape]``) with their truths, for normalization statistics."""

    input: TensorSpec
    task: TaskSpec
    X: npt.NDArray[Any]
    y: npt.NDArray[Any]

    @classmethod
    def of(cls, dataset: Dataset) -> DataInfo:
        return cls(dataset.input, dataset.task, dataset.X, dataset.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.input.shape)

    @property
    def width(self) -> int:
        """Logits (classes) or outputs the module must give per sample."""
        return self.task.width

    def float_X(self) -> npt.NDArray[np.float64]:
        """The seed samples as float64, for statistics."""
        return np.asarray(self.X, np.float64)


#: A builder: the function a model spec names.
Builder = Callable[[DataInfo], nn.Module]


def fleet_name(spec: str) -> str:
    """The model's default name in the fleet: a zoo name itself, else the function's name."""
    return function_name(spec) if is_import_spec(spec) else spec


def builder_of(spec: str) -> Builder:
    """The function ``spec`` names: a zoo entry or a user's import spec."""
    from cloud.learning.zoo import ZOO

    if spec in ZOO:
        return ZOO[spec]
    if not is_import_spec(spec):
        raise ModelError(
            f"model {spec!r}: not a zoo model ({', '.join(sorted(ZOO))}) nor an import spec "
            "'module:function' or 'path/to/file.py:function'"
        )
    try:
        return load_function(spec, what="model")
    except ImportSpecError as e:
        raise ModelError(str(e)) from e


def build_model(spec: str, info: DataInfo, seed: int) -> TaskModel:
    """A fresh, checked model of ``spec`` for ``info``, initialized deterministically from
    ``seed`` (torch's global RNG is left as it was)."""
    build = builder_of(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            net = build(info)
        except ModelError:
            raise
        except Exception as e:  # the user's builder failed
            raise ModelError(f"model {spec!r}: {_call(spec)}(info) raised {_one_line(e)}") from e
    if not isinstance(net, nn.Module):
        raise ModelError(
            f"model {spec!r}: {_call(spec)}(info) returned a {type(net).__name__}, "
            "not a torch.nn.Module"
        )
    model = TaskModel(net, info.input, info.task)
    check_outputs(spec, model, info)
    return model


def check_outputs(spec: str, model: TaskModel, info: DataInfo) -> None:
    """The module maps two seed samples to ``[2, width]`` finite numbers."""
    batch = torch.as_tensor(np.asarray(info.X[:CHECK_SAMPLES], np.float32))
    shape = [len(batch), *info.input_shape]
    model.eval()
    try:
        with torch.no_grad():
            out = model.logits(batch)
    except Exception as e:  # the user's forward failed
        raise ModelError(f"model {spec!r}: on a batch {shape} it raised {_one_line(e)}") from e
    want = [len(batch), info.width]
    what = (
        f"logits for the {info.width} classes"
        if info.task.is_classification
        else f"the {info.width} outputs {info.task.outputs}"
    )
    if not isinstance(out, torch.Tensor) or list(out.shape) != want:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"model {spec!r}: on a batch {shape} it returned {got}; expected {want} ({what})"
        )
    if not out.dtype.is_floating_point or not bool(torch.isfinite(out).all()):
        raise ModelError(
            f"model {spec!r}: on a batch {shape} it returned non-finite or non-float values"
        )


def _call(spec: str) -> str:
    return function_name(spec) if is_import_spec(spec) else spec


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")
