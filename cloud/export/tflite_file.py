"""Constant tensors of a TFLite file: where their bytes are, how they are quantized.

A TFLite model is a flatbuffer whose constant tensors (weights, biases) keep
their data in buffers at fixed offsets of the file, and their quantization
parameters (per-channel scales) in the tensor tables, outside those buffers.
This module reads that layout with the schema that ships with ai-edge-litert and
rewrites tensor values **in place**: same length, same offsets, so that a file
changed here differs from its base only in the bytes of the values written.

A *layer* is a compute op (conv, fully connected) with its weight tensor and
optional bias, named after the torch module it came from when the converter's
tensor names say so (``...Linear_f1;1`` -> ``f1``).

>>> parse_module_name("cloud.learning.models.DigitsCNN/torch.nn.modules.linear.Linear_f1;1")
'f1'
>>> parse_module_name("arith.constant")
''
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.errors import ArtifactError
from shared.tflite import HEAVY_OPS

_DTYPES = {0: "<f4", 1: "<f2", 2: "<i4", 3: "u1", 4: "<i8", 7: "<i2", 9: "i1", 10: "<f8"}
_MODULE = re.compile(r"[A-Z][A-Za-z0-9]*_([A-Za-z0-9_]+)$")


class TFLiteFileError(ArtifactError):
    """The bytes are not a TFLite model this module can read, or a write does not fit."""


@dataclass(frozen=True, eq=False)
class Tensor:
    """A tensor of the graph: its constant data's place in the file (if any), its quantization."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    offset: int | None  # of the first data byte from the start of the file; None: no data
    nbytes: int
    scales: npt.NDArray[np.float32] | None  # None: not quantized
    zero_points: npt.NDArray[np.int64] | None
    axis: int  # the quantized dimension (per-channel scales run along it)
    scale_offset: int | None  # where the scales are stored (float32), to rewrite them in place
    zero_point_offset: int | None  # where the zero points are stored (int64)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def is_constant(self) -> bool:
        return self.offset is not None

    def values(self, content: bytes) -> npt.NDArray[Any]:
        """The tensor's constant values read from ``content`` (a copy, in its shape)."""
        if self.offset is None:
            raise TFLiteFileError(f"tensor {self.name!r} holds no constant data")
        raw = np.frombuffer(content, self.dtype, count=self.size, offset=self.offset)
        return raw.reshape(self.shape).copy()

    def channel_scales(self) -> npt.NDArray[np.float64]:
        """Scales shaped to broadcast against the tensor (per-channel along ``axis``, or one)."""
        if self.scales is None:
            raise TFLiteFileError(f"tensor {self.name!r} is not quantized")
        s = self.scales.astype(np.float64)
        shape = [1] * len(self.shape)
        if s.size > 1:
            shape[self.axis] = s.size
        return s.reshape(shape)

    def dequantize(self, content: bytes) -> npt.NDArray[np.float64]:
        """Float values of a quantized constant: (q - zero_point) * scale."""
        q = self.values(content).astype(np.float64)
        zp = self.zero_points if self.zero_points is not None else np.zeros(1, np.int64)
        scales = self.channel_scales()
        zp_b = zp.astype(np.float64).reshape(scales.shape) if zp.size > 1 else float(zp[0])
        return (q - zp_b) * scales


@dataclass(frozen=True, eq=False)
class Layer:
    name: str
    op: str
    input: Tensor  # the activation it takes
    weight: Tensor
    bias: Tensor | None

    @property
    def tensors(self) -> list[Tensor]:
        return [self.weight] if self.bias is None else [self.weight, self.bias]


@dataclass(frozen=True, eq=False)
class TFLiteFile:
    """One model file (subgraph 0): its tensors by name, and its layers in graph order."""

    content: bytes
    tensors: dict[str, Tensor]
    layers: list[Layer]

    @classmethod
    def read(cls, content: bytes) -> TFLiteFile:
        try:
            tensors, layers = _read(content)
        except (IndexError, ValueError, TypeError, AttributeError, struct.error) as e:
            raise TFLiteFileError(f"not a readable TFLite model: {type(e).__name__}: {e}") from e
        return cls(content, tensors, layers)

    def values(self, name: str) -> npt.NDArray[Any]:
        return self.tensors[name].values(self.content)

    def constants(self) -> list[Tensor]:
        return [t for t in self.tensors.values() if t.is_constant]

    def with_values(self, values: Mapping[str, npt.ArrayLike]) -> bytes:
        """A copy of the file with the named constants' data replaced, in place.

        Each array must have the tensor's size and fit its dtype: a float written
        into an int8 tensor, or an int out of its range, is an error rather than
        a silent truncation.
        """
        out = bytearray(self.content)
        for name, v in values.items():
            t = self.tensors[name]
            arr = np.asarray(v)
            if t.offset is None or arr.size != t.size:
                raise TFLiteFileError(f"{name}: {arr.size} values do not fit this tensor")
            if t.dtype.kind in "iu":
                info = np.iinfo(t.dtype)
                if arr.dtype.kind not in "iu" or (
                    arr.size and (arr.min() < info.min or arr.max() > info.max)
                ):
                    raise TFLiteFileError(f"{name}: values do not fit {t.dtype}")
            out[t.offset : t.offset + t.nbytes] = np.ascontiguousarray(arr, t.dtype).tobytes()
        return bytes(out)

    def with_quantization(self, params: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]]) -> bytes:
        """A copy of the file with the named tensors' (scales, zero points) replaced in place.

        Only the values change, never their number: the file keeps its length and
        every offset.
        """
        out = bytearray(self.content)
        for name, (scales, zero_points) in params.items():
            t = self.tensors[name]
            s = np.asarray(scales, "<f4").ravel()
            z = np.asarray(zero_points, "<i8").ravel()
            if t.scales is None or t.scale_offset is None or s.size != t.scales.size:
                raise TFLiteFileError(f"{name}: {s.size} scales do not fit this tensor")
            if t.zero_point_offset is None or t.zero_points is None or z.size != t.zero_points.size:
                raise TFLiteFileError(f"{name}: {z.size} zero points do not fit this tensor")
            out[t.scale_offset : t.scale_offset + 4 * s.size] = s.tobytes()
            out[t.zero_point_offset : t.zero_point_offset + 8 * z.size] = z.tobytes()
        return bytes(out)


def _read(content: bytes) -> tuple[dict[str, Tensor], list[Layer]]:
    from ai_edge_litert import schema_py_generated as schema

    if len(content) < 8 or content[4:8] != b"TFL3":
        raise TFLiteFileError("not a TFLite model (no TFL3 identifier)")
    model = schema.Model.GetRootAs(content, 0)
    if model.SubgraphsLength() != 1:
        raise TFLiteFileError(f"expected one subgraph, found {model.SubgraphsLength()}")
    sg = model.Subgraphs(0)
    by_index: dict[int, Tensor] = {}
    for i in range(sg.TensorsLength()):
        by_index[i] = read_tensor(i, sg.Tensors(i), model)
    ops = {
        getattr(schema.BuiltinOperator, n): n for n in dir(schema.BuiltinOperator) if n.isupper()
    }
    layers: list[Layer] = []
    seen: set[str] = set()
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        op_name = ops.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "")
        inputs = [int(v) for v in op.InputsAsNumpy()] if op.InputsLength() else []
        if op_name not in HEAVY_OPS or len(inputs) < 2 or not by_index[inputs[1]].is_constant:
            continue
        weight = by_index[inputs[1]]
        bias = by_index[inputs[2]] if len(inputs) > 2 and inputs[2] >= 0 else None
        name = parse_module_name(weight.name) or f"{op_name.lower()}_{i}"
        if name in seen:
            name = f"{name}_{i}"
        seen.add(name)
        bias = bias if bias is not None and bias.is_constant else None
        layers.append(Layer(name, op_name, by_index[inputs[0]], weight, bias))
    tensors = {t.name: t for t in by_index.values()}
    if len(tensors) != len(by_index):
        raise TFLiteFileError("tensor names are not unique")
    return tensors, layers


def read_tensor(index: int, t: Any, model: Any) -> Tensor:
    dtype = np.dtype(_DTYPES.get(t.Type(), "u1"))
    shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    place = _buffer_place(model.Buffers(t.Buffer()))
    offset, nbytes = place if place is not None else (None, 0)
    if offset is not None and (
        t.Type() not in _DTYPES or nbytes != (int(np.prod(shape)) if shape else 1) * dtype.itemsize
    ):
        offset, nbytes = None, 0  # not plain dense data (a string or sparse tensor)
    scales = zps = None
    axis = 0
    scale_at = zp_at = None
    q = t.Quantization()
    if q is not None and q.ScaleLength():
        scales = np.asarray(q.ScaleAsNumpy(), np.float32)
        zps = (
            np.asarray(q.ZeroPointAsNumpy(), np.int64)
            if q.ZeroPointLength()
            else np.zeros(1, np.int64)
        )
        axis = int(q.QuantizedDimension())
        scale_at = _vector_at(q._tab, 8)
        zp_at = _vector_at(q._tab, 10)
    name = t.Name().decode("utf-8", "replace")
    return Tensor(index, name, shape, dtype, offset, nbytes, scales, zps, axis, scale_at, zp_at)


def _vector_at(tab: Any, field: int) -> int | None:
    """Where a table's vector field keeps its elements (the generated API gives only copies)."""
    o = tab.Offset(field)
    return int(tab.Vector(o)) if o else None


def _buffer_place(buf: Any) -> tuple[int, int] | None:
    """(offset, size) of a buffer's data in the file, None when it holds none."""
    if buf.Offset() > 1:  # data stored after the flatbuffer (models over 2 GB)
        return int(buf.Offset()), int(buf.Size())
    if buf.DataIsNone() or buf.DataLength() == 0:
        return None
    at = _vector_at(buf._tab, 4)
    return None if at is None else (at, int(buf.DataLength()))


def parse_module_name(tensor_name: str) -> str:
    """The torch module a converted tensor came from, or '' when its name does not say."""
    last = tensor_name.rsplit("/", 1)[-1].split(";", 1)[0]
    m = _MODULE.search(last.rsplit(".", 1)[-1])
    return m.group(1) if m else ""
