"""Per-layer change between two int8 artifacts, read from the files themselves.

The edge runtime's interpreter exposes every constant tensor of a model with
its quantization parameters. A layer is a compute op (conv, fully connected)
with its int8 weight tensor and int32 bias; we compare the two files layer by
layer: how many of the layer's bytes differ (what a byte-range patch must
carry), and the L2 norm of the change of the dequantized weights (how far the
layer actually moved). Per-channel scales live outside the weight buffers, so
they are counted on their own.

Only numpy and the edge runtime: the REST API compares versions with this
without importing torch.

>>> import numpy as np
>>> a = LayerTensors("f1", [np.array([[1, 2], [3, 4]], np.int8)], [np.array([0.5, 0.5])], [0], [0])
>>> b = LayerTensors("f1", [np.array([[1, 2], [3, 6]], np.int8)], [np.array([0.5, 0.5])], [0], [0])
>>> c = compare_layer(a, b)
>>> c.bytes, c.bytes_changed, c.l2_change, c.scales_changed
(4, 1, 1.0, 0)
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from shared.errors import ModelRejected
from shared.messages import LayerChange, WeightChange
from shared.runtime import interpreter_class
from shared.tflite import HEAVY_OPS, FlatbufferError, check_flatbuffer

logger = logging.getLogger(__name__)

# "cloud.learning.models.DigitsCNN/torch.nn.modules.linear.Linear_f1;1" -> "f1" (the torch module name)
_MODULE = re.compile(r"([A-Z][A-Za-z0-9]*)_([A-Za-z0-9_.]+)$")


@dataclass(frozen=True)
class LayerTensors:
    """A layer's quantized constant tensors (weights first, then bias) and their scales."""

    name: str
    tensors: list[npt.NDArray[Any]]
    scales: list[npt.NDArray[np.float64]]
    zero_points: list[Any]
    axes: list[int]

    @property
    def nbytes(self) -> int:
        return sum(int(t.nbytes) for t in self.tensors)

    @property
    def params(self) -> int:
        return sum(int(t.size) for t in self.tensors)

    def dequantized(self) -> npt.NDArray[np.float64]:
        """Every tensor as float, flattened and concatenated."""
        parts = []
        for t, scale, zp, axis in zip(
            self.tensors, self.scales, self.zero_points, self.axes, strict=True
        ):
            q = t.astype(np.float64)
            if scale.size > 1:  # per channel along ``axis``
                shape = [1] * q.ndim
                shape[axis] = scale.size
                q = (q - np.resize(zp, scale.size).reshape(shape)) * scale.reshape(shape)
            elif scale.size == 1:
                q = (q - float(np.ravel(zp)[0])) * float(scale[0])
            parts.append(q.ravel())
        return np.concatenate(parts) if parts else np.zeros(0)


def read_layers(content: bytes) -> list[LayerTensors]:
    """The layers of a TFLite file, in graph order, named after their torch modules.

    ModelRejected if the file is not structurally valid TFLite (tflite-runtime
    would crash on it rather than raise).
    """
    try:
        check_flatbuffer(content)
    except FlatbufferError as e:
        raise ModelRejected(f"not a valid TFLite file: {e}") from e
    cls, _ = interpreter_class()
    interp = cls(model_content=content)
    interp.allocate_tensors()
    layers: list[LayerTensors] = []
    names: set[str] = set()
    # _get_ops_details is the interpreter's op table; the public API has no other view of it.
    for i, op in enumerate(interp._get_ops_details()):
        if op["op_name"] not in HEAVY_OPS:
            continue
        tensors, scales, zps, axes = [], [], [], []
        name = ""
        for idx in (int(t) for t in op["inputs"][1:] if int(t) >= 0):
            detail = interp._get_tensor_details(idx, 0)
            qp = detail["quantization_parameters"]
            tensors.append(np.array(interp.get_tensor(idx)))
            scales.append(np.asarray(qp["scales"], np.float64))
            zps.append(np.asarray(qp["zero_points"]))
            axes.append(int(qp["quantized_dimension"]))
            name = name or _module_name(detail["name"])
        name = name or f"{op['op_name'].lower()}_{i}"
        if name in names:
            name = f"{name}_{i}"
        names.add(name)
        layers.append(LayerTensors(name, tensors, scales, zps, axes))
    return layers


def _module_name(tensor_name: str) -> str:
    last = tensor_name.rsplit("/", 1)[-1].split(";", 1)[0]
    m = _MODULE.search(last.rsplit(".", 1)[-1]) or _MODULE.search(last)
    return m.group(2) if m else ""


def compare_layer(parent: LayerTensors, child: LayerTensors) -> LayerChange:
    """Bytes and L2 change of one layer; None figures when the shapes do not match."""
    shapes_match = [t.shape for t in parent.tensors] == [t.shape for t in child.tensors] and [
        t.dtype for t in parent.tensors
    ] == [t.dtype for t in child.tensors]
    if not shapes_match:
        return LayerChange(name=child.name, params=child.params, bytes=child.nbytes)
    changed = sum(
        int(
            np.count_nonzero(
                np.frombuffer(a.tobytes(), np.uint8) != np.frombuffer(b.tobytes(), np.uint8)
            )
        )
        for a, b in zip(parent.tensors, child.tensors, strict=True)
    )
    before, after = parent.dequantized(), child.dequantized()
    l2 = float(np.linalg.norm(after - before))
    norm = float(np.linalg.norm(before))
    scales = sum(
        int(np.count_nonzero(a != b)) if a.shape == b.shape else int(b.size)
        for a, b in zip(parent.scales[:1], child.scales[:1], strict=True)
    )
    return LayerChange(
        name=child.name,
        params=child.params,
        bytes=child.nbytes,
        bytes_changed=changed,
        bytes_changed_fraction=round(changed / child.nbytes, 4) if child.nbytes else 0.0,
        l2_change=round(l2, 6),
        relative_change=round(l2 / norm, 6) if norm > 0 else None,
        scales_changed=scales,
    )


def compare_artifacts(parent: bytes | None, child: bytes) -> WeightChange:
    """Per-layer change from ``parent`` to ``child`` (the layer inventory alone without a parent)."""
    after = read_layers(child)
    total = sum(layer.nbytes for layer in after)
    if parent is None:
        layers = [LayerChange(name=c.name, params=c.params, bytes=c.nbytes) for c in after]
        return WeightChange(source="none", layers=layers, bytes=total)
    before = {layer.name: layer for layer in read_layers(parent)}
    layers = [
        compare_layer(before[c.name], c)
        if c.name in before
        else LayerChange(name=c.name, params=c.params, bytes=c.nbytes)
        for c in after
    ]
    return _totals("artifacts", layers)


def _totals(source: Any, layers: list[LayerChange]) -> WeightChange:
    total = sum(layer.bytes for layer in layers)
    known = [layer.bytes_changed for layer in layers]
    changed = None if any(c is None for c in known) else sum(c or 0 for c in known)
    return WeightChange(
        source=source,
        layers=layers,
        bytes=total,
        bytes_changed=changed,
        bytes_changed_fraction=round(changed / total, 4) if changed is not None and total else None,
    )


def from_trainer_report(delta: Any, measured: WeightChange | None = None) -> WeightChange | None:
    """Per-layer figures of the trainer's delta report (``RoundReport.details["delta"]``), or
    None when it has none.

    The report holds ``{"layers": [{"name", "bytes", "bytes_changed", "l2_change", ...}],
    "scales": "frozen" | "recalibrated", "budget_bytes", "residual_l2"}`` (``describe`` in
    cloud/export/grid.py, completed in cloud/export/budgeted.py);
    a figure it leaves out (e.g. ``relative_change``) is taken from ``measured``, the
    comparison of the two files, layer by layer.
    """
    if not isinstance(delta, dict):
        return None
    raw = delta.get("layers")
    if isinstance(raw, dict):
        raw = [{"name": k, **v} for k, v in raw.items() if isinstance(v, dict)]
    if not isinstance(raw, list) or not raw:
        return None
    known = {layer.name: layer for layer in measured.layers} if measured else {}
    try:
        layers = [_layer_from_entry(entry, known.get(str(entry["name"]))) for entry in raw]
        out = _totals("trainer", layers)
        out.scales = None if delta.get("scales") is None else str(delta["scales"])
        out.budget_bytes = None if delta.get("budget_bytes") is None else int(delta["budget_bytes"])
        out.residual_l2 = None if delta.get("residual_l2") is None else float(delta["residual_l2"])
    except (KeyError, TypeError, ValueError, AttributeError, ValidationError) as e:
        logger.warning("the trainer's delta report has no usable per-layer figures: %s", e)
        return None
    return out


def _layer_from_entry(entry: dict[str, Any], measured: LayerChange | None) -> LayerChange:
    size = int(entry.get("bytes", 0))
    changed = entry.get("bytes_changed")
    fraction = entry.get("bytes_changed_fraction")
    if fraction is None and changed is not None and size:
        fraction = round(int(changed) / size, 4)
    reported = LayerChange(
        name=str(entry["name"]),
        params=int(entry.get("params", 0)),
        bytes=size,
        bytes_changed=None if changed is None else int(changed),
        bytes_changed_fraction=fraction,
        l2_change=entry.get("l2_change", entry.get("l2")),
        relative_change=entry.get("relative_change"),
        scales_changed=entry.get("scales_changed"),
        residual_l2=entry.get("residual_l2"),
    )
    if measured is None:
        return reported
    missing = {k: v for k, v in measured.model_dump().items() if getattr(reported, k) is None}
    if not reported.params:
        missing["params"] = measured.params
    return reported.model_copy(update=missing)
