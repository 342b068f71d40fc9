"""The parent's frozen int8 grid: where a child's weights land on it, and what changed.

A freshly calibrated export gives every tensor new scales, so ~90% of the int8
file's bytes change and a patch is as large as the file (DESIGN, "Artifacts,
versions and deltas"). A budgeted child (cloud/export/budgeted.py) is written
onto the PARENT's grid instead: each weight keeps its per-channel scale, each
int32 bias its scale, and the child's float weights become the int8 values
``round(w / scale)`` (``grid_target``, clipped to the range; ``grid_limits``
is the float range a value can hold), written into a copy of the parent's
bytes: same length, same offsets, so a byte-range patch carries just the
values that changed. This module holds the grid; which values a round may
change, under a budget of bytes, is budgeted.py's.

**Step levels.** A changed int8 weight moves by one of a few step counts
(``levels``, default 8, 16, 32 and 64, either sign; ``on_levels`` moves a
grid target to the nearest of them, or not at all), so a patch's data, the
byte-wise differences, is one of eight symbols: about 4 bits a changed value
where free values cost 8 (a refit moves a chosen weight by about 40 steps,
evenly spread). The error of the rounding stays in the trainer's float model,
a candidate again next round like the rest of the residual. On ``edgeloop
bench deltas --quick`` at 1300 changed values a round (no escalation), free
values ended at 0.965 with patches 6.5% of the full files; the levels 8-64 at
0.965 with 4.6%, the levels 4-64 at 0.965 with 5.0%, half-octave levels 4-90
at 0.963 with 5.1%, and the levels 4, 16, 64 at 0.958 with 4.4%. What is left
of a patch is then mostly positions (gaps and lengths), which sit at the
entropy bound of a sparse choice.

**Activations.** Their ranges are frozen too; when a fresh calibration of the
published weights finds ranges that no longer fit (``activation_misfits``),
``with_activations_from`` copies just those fresh activation scales in (with
the activations tied to them) and requantizes the biases that depend on them:
tens to a few hundred bytes instead of the whole file.

**The float reference** of an int8 file is the float model of exactly the
weights it holds (``float_reference``), what its numeric check compares it
with; **what changed** between two files of one layout, per layer, is
``describe`` (a round's ``details["delta"]``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.export.param_layout import LayoutMismatch
from cloud.export.tflite_file import Layer, Tensor, TFLiteFile

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def update_tensors(parent: TFLiteFile) -> list[Tensor]:
    """The quantized constants a budgeted update may change: every layer's weight and bias."""
    out = [t for layer in parent.layers for t in layer.tensors if t.scales is not None]
    if not out:
        raise LayoutMismatch("the parent has no quantized layers to update")
    return out


def grid_target(t: Tensor, w: FloatArray) -> tuple[npt.NDArray[np.int64], int]:
    """``w`` on the tensor's frozen grid, clipped to its range, and how many values clipped."""
    zp = grid_zero_point(t)
    raw = np.rint(w / t.channel_scales()) + zp
    lo, hi = grid_range(t)
    clipped = int(np.count_nonzero((raw < lo) | (raw > hi)))
    return np.clip(raw, lo, hi).astype(np.int64), clipped


def on_levels(
    q: npt.NDArray[np.int64],
    target: npt.NDArray[np.int64],
    levels: Sequence[int],
    lo: int = -127,
    hi: int = 127,
) -> npt.NDArray[np.int64]:
    """``target`` moved to ``q`` plus the nearest allowed step count (or none), in range.

    >>> on_levels(np.array([0, 0, 0, 120]), np.array([3, -5, 27, 50]), (8, 32)).tolist()
    [0, -8, 32, 88]
    """
    allowed = np.concatenate(([0], np.asarray(levels, np.int64)))
    d = target - q
    step = allowed[np.abs(np.abs(d)[..., None] - allowed).argmin(axis=-1)]
    moved: npt.NDArray[np.int64] = np.clip(q + np.sign(d) * step, lo, hi)
    return moved


def grid_limits(parent: TFLiteFile) -> dict[str, tuple[FloatArray, FloatArray]]:
    """Per value, the float range the frozen grid can hold (what training must stay in)."""
    out = {}
    for t in update_tensors(parent):
        lo, hi = grid_range(t)
        s = np.broadcast_to(t.channel_scales(), t.shape)
        zp = grid_zero_point(t)
        out[t.name] = ((lo - zp) * s, (hi - zp) * s)
    return out


def grid_zero_point(t: Tensor) -> int | IntArray:
    """The tensor's zero point(s), shaped like its channel scales (one: an int)."""
    zp = t.zero_points if t.zero_points is not None else np.zeros(1, np.int64)
    return zp.reshape(t.channel_scales().shape) if zp.size > 1 else int(zp[0])


def grid_range(t: Tensor) -> tuple[int, int]:
    """The integers the tensor's values may take."""
    info = np.iinfo(t.dtype)
    # int8 weights are symmetric and narrow-range ([-127, 127]) in TFLite's int8 spec
    symmetric = t.dtype == np.int8 and not np.any(t.zero_points)
    return (-info.max if symmetric else info.min), info.max


# -- what changed ------------------------------------------------------------------


def describe(
    parent: TFLiteFile, child: TFLiteFile, weights: Mapping[str, npt.ArrayLike] | None = None
) -> dict[str, Any]:
    """Per-layer change of ``child`` against ``parent`` as plain numbers.

    Per layer (weight and bias together): ``bytes`` of data, ``bytes_changed``,
    ``l2_change`` (L2 norm of the change of the dequantized values) and
    ``scales_changed`` (per-channel weight scales that differ); with the trainer's
    float ``weights``, ``residual_l2``: the norm of what the child's grid image of
    those weights still differs from the child (the change left to send).
    """
    before = {layer.name: layer for layer in parent.layers}
    layers, pending_sq = [], 0.0
    for layer in child.layers:
        entry = _layer_change(parent, child, before.get(layer.name), layer)
        if weights is not None:
            sq = _residual_sq(child, layer, weights)
            entry["residual_l2"] = round(sq**0.5, 6)
            pending_sq += sq
        layers.append(entry)
    total = sum(e["bytes"] for e in layers)
    changed_total = sum(e.get("bytes_changed", e["bytes"]) for e in layers)
    file_changed = bytes_changed(parent.content, child.content)
    out: dict[str, Any] = {
        "file_bytes": len(child.content),
        "bytes_changed": file_changed,
        "bytes_changed_fraction": round(file_changed / len(child.content), 4),
        "weight_bytes": total,
        "weight_bytes_changed": changed_total,
        "layers": layers,
    }
    if weights is not None:
        out["residual_l2"] = round(pending_sq**0.5, 6)
    return out


def _layer_change(
    parent: TFLiteFile, child: TFLiteFile, old: Layer | None, layer: Layer
) -> dict[str, Any]:
    """One layer's entry of ``describe``; without a parent layer of the same sizes,
    only its size."""
    size = sum(t.nbytes for t in layer.tensors)
    params = sum(t.size for t in layer.tensors)
    entry: dict[str, Any] = {"name": layer.name, "params": params, "bytes": size}
    if old is None or [t.nbytes for t in old.tensors] != [t.nbytes for t in layer.tensors]:
        return entry
    pairs = list(zip(old.tensors, layer.tensors, strict=True))
    changed = sum(_bytes_differ(parent.content, child.content, a, b) for a, b in pairs)
    diff = np.concatenate(
        [(b.dequantize(child.content) - a.dequantize(parent.content)).ravel() for a, b in pairs]
    )
    ws, cs = old.weight.scales, layer.weight.scales
    entry.update(
        bytes_changed=changed,
        bytes_changed_fraction=round(changed / size, 4),
        l2_change=round(float(np.linalg.norm(diff)), 6),
        scales_changed=int(np.count_nonzero(ws != cs))
        if ws is not None and cs is not None and ws.shape == cs.shape
        else layer.weight.size,
    )
    return entry


def _residual_sq(child: TFLiteFile, layer: Layer, weights: Mapping[str, npt.ArrayLike]) -> float:
    """Squared L2 norm of what the layer's grid image of ``weights`` still differs from
    the child by."""
    sq = 0.0
    for t in layer.tensors:
        if t.name in weights and t.scales is not None:
            target, _ = grid_target(t, np.asarray(weights[t.name], np.float64).reshape(t.shape))
            d = (target - t.values(child.content)) * t.channel_scales()
            sq += float(np.sum(d * d))
    return sq


def bytes_changed(a: bytes, b: bytes) -> int:
    """Bytes that differ between two files of one length (all of ``b`` otherwise)."""
    if len(a) != len(b):
        return len(b)
    return int(np.count_nonzero(np.frombuffer(a, np.uint8) != np.frombuffer(b, np.uint8)))


def _bytes_differ(a: bytes, b: bytes, ta: Tensor, tb: Tensor) -> int:
    assert ta.offset is not None and tb.offset is not None
    x = np.frombuffer(a, np.uint8, count=ta.nbytes, offset=ta.offset)
    y = np.frombuffer(b, np.uint8, count=tb.nbytes, offset=tb.offset)
    return int(np.count_nonzero(x != y))


# -- the float reference of an artifact -----------------------------------------


def float_reference(float_file: TFLiteFile, artifact: TFLiteFile) -> bytes:
    """``float_file`` with the artifact's dequantized weights and biases written in:
    a float model of exactly the weights the int8 file holds, for its numeric check."""
    values = {}
    for t in update_tensors(artifact):
        if t.name not in float_file.tensors or float_file.tensors[t.name].size != t.size:
            raise LayoutMismatch(f"the float model has no tensor {t.name!r} of {t.size} values")
        values[t.name] = t.dequantize(artifact.content).astype(np.float32)
    return float_file.with_values(values)


# -- activation ranges ------------------------------------------------------------


def activation_tensors(f: TFLiteFile) -> list[Tensor]:
    """Quantized tensors that are not constants: the activations between int8 ops."""
    return [t for t in f.tensors.values() if t.scales is not None and not t.is_constant]


def activation_misfits(frozen: TFLiteFile, fresh: TFLiteFile) -> dict[str, float]:
    """How badly each frozen activation range fits a fresh calibration: the share of
    the frozen range by which the fresh range overflows it (values that would
    saturate), or by which the fresh range uses less than half of it (more than
    one bit of resolution lost). 0 when the range fits."""
    out = {}
    for t in activation_tensors(frozen):
        other = fresh.tensors.get(t.name)
        if other is None or other.scales is None:
            continue
        lo, hi = _float_range(t)
        flo, fhi = _float_range(other)
        width = hi - lo
        overflow = max(lo - flo, 0.0) + max(fhi - hi, 0.0)
        wasted = 0.5 - (min(fhi, hi) - max(flo, lo)) / width
        out[t.name] = max(overflow / width, wasted, 0.0)
    return out


def tied_activations(f: TFLiteFile, names: Iterable[str]) -> set[str]:
    """``names`` and every activation quantized exactly like one of them: ops such as
    pooling, reshape and transpose must keep their input's scale, so the quantizer
    gives such chains one (scale, zero point), and they change together."""

    def key(t: Tensor) -> tuple[Any, ...]:
        assert t.scales is not None and t.zero_points is not None
        return (t.dtype.str, t.scales.tobytes(), t.zero_points.tobytes())

    wanted = {key(f.tensors[n]) for n in names}
    return {t.name for t in activation_tensors(f) if key(t) in wanted}


def _float_range(t: Tensor) -> tuple[float, float]:
    assert t.scales is not None and t.zero_points is not None
    info = np.iinfo(t.dtype)
    s, zp = float(t.scales[0]), int(t.zero_points[0])
    return (info.min - zp) * s, (info.max - zp) * s


def with_activations_from(
    artifact: TFLiteFile, fresh: TFLiteFile, names: Iterable[str] | None = None
) -> bytes:
    """The artifact with the fresh calibration's scales for the activations ``names``
    (default: all), its weights untouched.

    A bias is stored in units of (input scale × weight scale), so the bias of a
    layer whose input scale changes is requantized; weight grids stay frozen.
    """
    only = None if names is None else set(names)
    params: dict[str, tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]] = {}
    for t in activation_tensors(artifact):
        new = fresh.tensors.get(t.name)
        if (only is not None and t.name not in only) or new is None:
            continue
        if new.scales is not None and new.zero_points is not None:
            params[t.name] = (new.scales, new.zero_points)
    content = TFLiteFile.read(artifact.with_quantization(params))
    bias_params: dict[str, tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]] = {}
    bias_values = {}
    for layer in artifact.layers:
        bias = layer.bias
        if bias is None or bias.scales is None or bias.zero_points is None:
            continue
        if layer.input.name not in params:
            continue
        scale = _bias_scale(layer, float(params[layer.input.name][0][0]))
        value = bias.dequantize(artifact.content).ravel()
        info = np.iinfo(bias.dtype)
        bias_values[bias.name] = np.clip(np.rint(value / scale), info.min, info.max).astype(
            np.int64
        )
        bias_params[bias.name] = (scale, bias.zero_points)
    return TFLiteFile.read(content.with_quantization(bias_params)).with_values(bias_values)


def _bias_scale(layer: Layer, input_scale: float) -> npt.NDArray[np.float32]:
    # the quantizer's convention (checked on its files): float32 of input × weight scale
    assert layer.weight.scales is not None
    return (input_scale * layer.weight.scales.astype(np.float64)).astype(np.float32)
