"""Where each torch parameter sits in a converted TFLite file.

The converter lays a parameter out as a transposition of its axes (OIHW -> OHWI
for a conv, ``[O, I, K]`` -> ``[O, 1, K, I]`` for a conv1d run as a conv2d,
``[C*M, 1, H, W]`` -> ``[1, H, W, C*M]`` for a depthwise conv) under a tensor
name of its own making, and it folds what follows or precedes a layer into
the layer's constants: an eval-mode batch norm into the conv or dense layer
before it (weight ``w·k``, bias ``(b − mean)·k + β`` with ``k = γ/√(var+ε)``),
a constant input scaling (``x·(1/255)``) into the first conv's weights.

``ParamLayout.match`` finds, for each weight parameter, the float tensor of the
converted file that holds its values up to a transposition, unit axes and a
factor per output channel (the fold), so no name, layout or fold is assumed.
A layer's bias tensor then maps onto the layer's bias parameter (the batch
norm's shift when the layer has none), with the fold's factor and offset.
Each ``Placement`` moves arrays between the two spaces: values (with the fold),
masks (layout only), curvatures (``F / factor²``) and ranges.

The fold's factor and offset are those of the model the layout was matched on
(the round's unconstrained model); a refit holds its batch norms in eval mode
with exactly those statistics (``refit.frozen_batch_norms``), so the map stays
exact during a round. A batch norm that the converter did not fold into a layer
(one after a conv1d stays a float multiply-add) cannot be written on the frozen
grid: ``LayoutMismatch``, and the round re-calibrates.

>>> params_of(nn.Linear(3, 2))["weight"].shape
(2, 3)
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from torch import nn

from cloud.export.errors import ExportError
from cloud.export.tflite_file import Tensor, TFLiteFile, parse_module_name

Arrays = dict[str, npt.NDArray[Any]]
FloatArray = npt.NDArray[np.float64]

#: How close a converted tensor must be to a parameter times its fold (float32 products).
_RTOL = 1e-4


class LayoutMismatch(ExportError):
    """The child's float weights do not map onto the parent's int8 tensors."""


@dataclass(frozen=True)
class Placement:
    """One parameter's place in one tensor: ``tensor = move(param) * factor + offset``,
    the factor and offset per output channel (torch axis 0), ``None`` when 1 and 0."""

    param: str
    tensor: str
    param_shape: tuple[int, ...]
    tensor_shape: tuple[int, ...]
    perm: tuple[int, ...]  # over the parameter's non-unit axes
    factor: FloatArray | None = field(default=None, repr=False)  # [O]
    offset: FloatArray | None = field(default=None, repr=False)  # torch layout

    def move(self, a: npt.ArrayLike) -> npt.NDArray[Any]:
        """Torch layout -> tensor layout, values untouched."""
        arr = np.asarray(a).reshape(_squeezed(self.param_shape))
        return np.transpose(arr, self.perm).reshape(self.tensor_shape)

    def move_back(self, a: npt.ArrayLike) -> npt.NDArray[Any]:
        """Tensor layout -> torch layout, values untouched."""
        squeezed = np.transpose(np.zeros(_squeezed(self.param_shape), np.int8), self.perm).shape
        arr = np.asarray(a).reshape(squeezed)
        return np.transpose(arr, np.argsort(self.perm)).reshape(self.param_shape)

    def to_tensor(self, p: npt.ArrayLike) -> npt.NDArray[Any]:
        if self.factor is None and self.offset is None:
            return self.move(p)
        v = np.asarray(p, np.float64) * self._factor() + self._offset()
        return self.move(v)

    def to_param(self, t: npt.ArrayLike) -> npt.NDArray[Any]:
        if self.factor is None and self.offset is None:
            return self.move_back(t)
        return (np.asarray(self.move_back(t), np.float64) - self._offset()) / self._factor()

    def curvature_to_tensor(self, f: npt.ArrayLike) -> npt.NDArray[Any]:
        """A curvature per parameter value as one per tensor value (d tensor = factor · d param)."""
        if self.factor is None:
            return self.move(f)
        return self.move(np.asarray(f, np.float64) / (self._factor() ** 2))

    def range_to_param(self, lo: npt.ArrayLike, hi: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """A tensor value's range [lo, hi] as the parameter's (a negative factor swaps ends)."""
        a, b = self.to_param(lo), self.to_param(hi)
        return np.minimum(a, b), np.maximum(a, b)

    def _factor(self) -> FloatArray | float:
        if self.factor is None:
            return 1.0
        return self.factor.reshape((-1,) + (1,) * (len(self.param_shape) - 1))

    def _offset(self) -> FloatArray | float:
        return 0.0 if self.offset is None else self.offset


@dataclass(frozen=True)
class ParamLayout:
    """Where each torch parameter sits in a converted TFLite file."""

    placements: dict[str, Placement]  # by parameter name
    #: parameters folded into a layer's constants (a batch norm's scale): held during a round
    folded: frozenset[str] = frozenset()
    #: layer constants no parameter holds (the zero bias of a bias-free conv), float values
    fixed: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)

    @property
    def tensors(self) -> dict[str, str]:
        """Parameter -> TFLite tensor name."""
        return {n: p.tensor for n, p in self.placements.items()}

    @property
    def perms(self) -> dict[str, tuple[int, ...]]:
        """Parameter -> the transposition of its non-unit axes into the tensor's."""
        return {n: p.perm for n, p in self.placements.items()}

    def tensor_names(self) -> set[str]:
        """Every layer constant the layout accounts for (mapped or fixed)."""
        return set(self.tensors.values()) | set(self.fixed)

    @classmethod
    def match(cls, model: nn.Module, float_file: TFLiteFile) -> ParamLayout:
        return _match(model, float_file)

    def to_tflite(self, arrays: Mapping[str, npt.ArrayLike]) -> Arrays:
        """Values by parameter name (torch layout) -> by tensor name (TFLite layout, folded);
        parameters that no tensor holds are left out."""
        return {
            self.placements[n].tensor: self.placements[n].to_tensor(a)
            for n, a in arrays.items()
            if n in self.placements
        }

    def weights(self, params: Mapping[str, npt.ArrayLike]) -> Arrays:
        """Every layer constant's float values: ``to_tflite`` plus the fixed ones."""
        return {**self.fixed, **self.to_tflite(params)}

    def to_torch(self, arrays: Mapping[str, npt.ArrayLike]) -> Arrays:
        """Values by tensor name (TFLite layout) -> by parameter name (torch layout)."""
        return {
            n: p.to_param(arrays[p.tensor])
            for n, p in self.placements.items()
            if p.tensor in arrays
        }

    def masks_to_torch(self, masks: Mapping[str, npt.ArrayLike]) -> Arrays:
        """Per-value flags by tensor name -> by parameter name (moved, never scaled)."""
        return {
            n: p.move_back(masks[p.tensor]) for n, p in self.placements.items() if p.tensor in masks
        }

    def curvature_to_tflite(self, curvature: Mapping[str, npt.ArrayLike]) -> Arrays:
        return {
            self.placements[n].tensor: self.placements[n].curvature_to_tensor(f)
            for n, f in curvature.items()
            if n in self.placements
        }

    def limits_to_torch(
        self, limits: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]]
    ) -> dict[str, tuple[FloatArray, FloatArray]]:
        return {
            n: p.range_to_param(*limits[p.tensor])
            for n, p in self.placements.items()
            if p.tensor in limits
        }


def params_of(model: nn.Module) -> Arrays:
    return {n: p.detach().cpu().numpy().astype(np.float32) for n, p in model.named_parameters()}


# -- matching ------------------------------------------------------------------------


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1) or (1,)


def _match(model: nn.Module, float_file: TFLiteFile) -> ParamLayout:
    params = params_of(model)
    consts = [t for t in float_file.constants() if t.dtype == np.float32]
    values = {t.name: float_file.values(t.name).astype(np.float64) for t in consts}
    placements: dict[str, Placement] = {}
    for name, arr in params.items():
        if arr.ndim < 2:
            continue  # biases and norms go with their layer, below
        hits = [h for t in consts if t.size == arr.size for h in _weight_hits(name, arr, t, values)]
        if len(hits) > 1:  # equal values (e.g. untrained twins): the names decide
            hits = [h for h in hits if parse_module_name(h.tensor) == _module(name)]
        if len(hits) != 1:
            raise LayoutMismatch(
                f"parameter {name!r} matches {len(hits)} tensors of the converted file"
            )
        placements[name] = hits[0]
    norms = _batch_norms(model)
    folded: set[str] = set()
    fixed: dict[str, npt.NDArray[np.float32]] = {}
    by_tensor = {p.tensor: p for p in placements.values()}
    for layer in float_file.layers:
        weight = by_tensor.get(layer.weight.name)
        if weight is None or layer.bias is None:
            continue
        norm = _norm_of(weight, norms)
        if norm is not None:
            folded.add(f"{norm.prefix}weight")
        bias = _bias_placement(weight, norm, layer.bias, values[layer.bias.name], params)
        if bias is None:
            fixed[layer.bias.name] = values[layer.bias.name].astype(np.float32)
            continue
        placements[bias.param] = bias
        if norm is not None and bias.param != f"{norm.prefix}bias":
            folded.add(f"{norm.prefix}bias")
    _check_complete(params, placements, folded, norms)
    if len({p.tensor for p in placements.values()}) != len(placements):
        raise LayoutMismatch("two parameters map to one tensor of the converted file")
    return ParamLayout(placements, frozenset(folded), fixed)


def _module(param: str) -> str:
    return param.rsplit(".", 1)[0].rsplit(".", 1)[-1]


def _weight_hits(
    name: str, arr: npt.NDArray[Any], t: Tensor, values: Mapping[str, FloatArray]
) -> list[Placement]:
    """Every way ``t`` holds ``arr``: a transposition of the non-unit axes, exact or
    up to a factor per output channel."""
    src, dst = _squeezed(arr.shape), _squeezed(t.shape)
    if sorted(src) != sorted(dst):
        return []
    target = values[t.name]
    out = []
    for perm in set(itertools.permutations(range(len(src)))):
        if tuple(src[i] for i in perm) != dst:
            continue
        place = Placement(name, t.name, arr.shape, t.shape, perm)
        back = np.asarray(place.move_back(target), np.float64)
        if np.array_equal(back, arr):
            out.append(place)
            continue
        factor = _channel_factor(arr, back)
        if factor is not None:
            out.append(Placement(name, t.name, arr.shape, t.shape, perm, factor))
    return out


def _channel_factor(p: npt.NDArray[Any], t: FloatArray) -> FloatArray | None:
    """The factor per output channel with ``t ≈ p · factor``, or None when there is none."""
    pc = np.asarray(p, np.float64).reshape(len(p), -1)
    tc = t.reshape(len(t), -1)
    norm = np.sum(pc * pc, axis=1)
    if pc.shape[1] < 2 or np.any(norm == 0):
        return None  # one value per channel (or a dead channel) fits any factor
    factor = np.sum(pc * tc, axis=1) / norm
    scale = float(np.max(np.abs(tc))) or 1.0
    if np.allclose(tc, pc * factor[:, None], rtol=_RTOL, atol=_RTOL * 1e-2 * scale):
        return np.asarray(factor, np.float64)
    return None


@dataclass(frozen=True)
class _Norm:
    prefix: str  # "net.bn1."
    factor: FloatArray  # γ/√(var+ε) per channel, eval mode
    shift: FloatArray  # β − mean·factor


def _batch_norms(model: nn.Module) -> list[_Norm]:
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or m.running_var is None:
            continue
        var = m.running_var.detach().cpu().numpy().astype(np.float64)
        mean = m.running_mean.detach().cpu().numpy().astype(np.float64)  # type: ignore[union-attr]
        gamma = m.weight.detach().cpu().numpy() if m.weight is not None else np.ones_like(var)
        beta = m.bias.detach().cpu().numpy() if m.bias is not None else np.zeros_like(var)
        factor = gamma.astype(np.float64) / np.sqrt(var + m.eps)
        out.append(_Norm(f"{name}." if name else "", factor, beta - mean * factor))
    return out


def _norm_of(weight: Placement, norms: list[_Norm]) -> _Norm | None:
    """The batch norm folded into this layer: the one whose factor is the weight's, or
    proportional to it (a constant input scaling folded in too) when the converter's
    tensor name says that norm was fused there."""
    if weight.factor is None:
        return None
    exact, scaled = [], []
    for n in norms:
        if n.factor.shape != weight.factor.shape or np.any(n.factor == 0):
            continue
        ratio = weight.factor / n.factor
        if not np.allclose(ratio, ratio.mean(), rtol=_RTOL * 10):
            continue
        if np.isclose(ratio.mean(), 1.0, rtol=_RTOL * 10):
            exact.append(n)
        elif _mentions(weight.tensor, n):
            scaled.append(n)
    found = exact or scaled
    if len(found) > 1:
        found = [n for n in found if _mentions(weight.tensor, n)]
    return found[0] if len(found) == 1 else None


def _mentions(tensor: str, norm: _Norm) -> bool:
    """Whether the converter named the tensor after the norm (``...BatchNorm2d_bn1;``)."""
    leaf = norm.prefix.rstrip(".").rsplit(".", 1)[-1]
    return re.search(rf"BatchNorm\w*_{re.escape(leaf)}(;|$)", tensor) is not None


def _bias_placement(
    weight: Placement,
    norm: _Norm | None,
    tensor: Tensor,
    value: FloatArray,
    params: Mapping[str, npt.NDArray[Any]],
) -> Placement | None:
    """The parameter a layer's bias tensor holds, or None when it holds a constant.

    The layer's bias as it is (nothing folded, or an input scaling, which leaves the
    bias alone); times the norm's factor plus its shift; or, with an affine fold
    after the layer (a regressor's de-standardization: ``y·s + m``), times the
    weight's factor plus the rest. A layer without a bias: the norm's shift, or a
    constant of the round (a zero bias, the fold's offset)."""
    layer_bias = weight.param.rsplit(".", 1)[0] + ".bias"
    value = value.ravel()
    if layer_bias in params and params[layer_bias].size == value.size:
        b = params[layer_bias].astype(np.float64).ravel()
        shape = params[layer_bias].shape
        if norm is None and np.allclose(value, b, rtol=_RTOL, atol=1e-7):
            return Placement(layer_bias, tensor.name, shape, tensor.shape, (0,))
        factor = norm.factor if norm is not None else weight.factor
        offset = value - b * (factor if factor is not None else 1.0)
        return Placement(
            layer_bias, tensor.name, shape, tensor.shape, (0,), factor, offset.reshape(shape)
        )
    if norm is not None and f"{norm.prefix}bias" in params:
        beta = params[f"{norm.prefix}bias"].astype(np.float64)
        return Placement(
            f"{norm.prefix}bias", tensor.name, beta.shape, tensor.shape, (0,), None, value - beta
        )
    return None


def _check_complete(
    params: Mapping[str, Any], placements: Mapping[str, Placement], folded: set[str], norms: Any
) -> None:
    left = [n for n in params if n not in placements and n not in folded]
    if not left:
        return
    unfolded = [n for n in left if any(n.startswith(norm.prefix) for norm in norms)]
    if unfolded:
        raise LayoutMismatch(
            f"batch norm parameter {unfolded[0]!r} is not folded into a layer of the converted "
            "file (a norm after a conv1d or before a layer stays a float multiply-add)"
        )
    raise LayoutMismatch(f"parameter {left[0]!r} matches no layer tensor of the converted file")
