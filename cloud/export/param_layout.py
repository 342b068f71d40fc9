"""Where each torch parameter sits in a converted TFLite file.

The converter lays a parameter out as a transposition of its axes (OIHW -> OHWI
for a conv) under a tensor name of its own making. ``ParamLayout.match`` finds,
for each parameter, the float tensor of the converted file that holds exactly
its values, so no name or layout is assumed; the layout then moves arrays
between the two: by parameter name in torch layout, by tensor name in TFLite
layout.

>>> params_of(nn.Linear(3, 2))["weight"].shape
(2, 3)
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from torch import nn

from cloud.export.errors import ExportError
from cloud.export.tflite_file import TFLiteFile, parse_module_name

Arrays = dict[str, npt.NDArray[Any]]


class LayoutMismatch(ExportError):
    """The child's float weights do not map onto the parent's int8 tensors."""


@dataclass(frozen=True)
class ParamLayout:
    """Where each torch parameter sits in a converted TFLite file."""

    tensors: dict[str, str]  # parameter -> TFLite tensor name
    perms: dict[str, tuple[int, ...]]  # parameter axes -> tensor axes (np.transpose)

    @classmethod
    def match(cls, model: nn.Module, float_file: TFLiteFile) -> ParamLayout:
        consts = [t for t in float_file.constants() if t.dtype == np.float32]
        values = {t.name: float_file.values(t.name) for t in consts}
        tensors, perms = {}, {}
        for name, p in model.named_parameters():
            arr = p.detach().cpu().numpy()
            hits = [
                (t.name, perm)
                for t in consts
                if t.size == arr.size
                for perm in [_axes_onto(arr, values[t.name])]
                if perm is not None
            ]
            if len(hits) > 1:  # equal values (e.g. two untrained biases): the names decide
                module = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
                hits = [h for h in hits if parse_module_name(h[0]) == module]
            if len(hits) != 1:
                raise LayoutMismatch(
                    f"parameter {name!r} matches {len(hits)} tensors of the converted file"
                )
            tensors[name], perms[name] = hits[0]
        if len(set(tensors.values())) != len(tensors):
            raise LayoutMismatch("two parameters map to one tensor of the converted file")
        return cls(tensors, perms)

    def to_tflite(self, arrays: Mapping[str, npt.ArrayLike]) -> Arrays:
        """Arrays by parameter name (torch layout) -> by tensor name (TFLite layout)."""
        return {
            self.tensors[n]: np.transpose(np.asarray(a), self.perms[n]) for n, a in arrays.items()
        }

    def to_torch(self, arrays: Mapping[str, npt.ArrayLike]) -> Arrays:
        """Arrays by tensor name (TFLite layout) -> by parameter name (torch layout)."""
        out = {}
        for param, tensor in self.tensors.items():
            if tensor in arrays:
                out[param] = np.transpose(np.asarray(arrays[tensor]), np.argsort(self.perms[param]))
        return out


def _axes_onto(arr: npt.NDArray[Any], target: npt.NDArray[Any]) -> tuple[int, ...] | None:
    for perm in itertools.permutations(range(arr.ndim)):
        moved = np.transpose(arr, perm)
        if moved.shape == target.shape and np.array_equal(moved, target):
            return perm
    return None


def params_of(model: nn.Module) -> Arrays:
    return {n: p.detach().cpu().numpy().astype(np.float32) for n, p in model.named_parameters()}
