"""An int8 file as the cloud judges it: a batch of raw samples in, answers out.

The gate, the explanations, the budgeted update's numeric check and ``edgeloop
diff`` all run a version's FILE, in the interpreter the edges run
(``shared.runtime.interpreter_class``), never the torch model: that file is
what the fleet serves. edgeloop's files keep float (or uint8) input and float
output around their int8 core, so an answer is set, invoke, get: a classifier's
class probabilities or a regressor's outputs, one sample at a time (the file's
batch is 1).

>>> import numpy as np
>>> from cloud.export.exporter import export_int8
>>> from cloud.learning.contract import DataInfo, build_model
>>> from cloud.data.datasets import load_dataset
>>> ds = load_dataset("digits")
>>> exported = export_int8(build_model("digits", DataInfo.of(ds), 0), ds.X[:50], ds.X[50:54])
>>> a = Artifact(exported.content)
>>> a.input.describe(), a.width, a.answers(ds.X[:3]).shape
('[64] float32', 10, (3, 10))
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.codec import sha256_hex
from shared.errors import ModelRejected
from shared.runtime import interpreter_class
from shared.tensors import TensorSpec
from shared.tflite import FlatbufferError, check_flatbuffer

FloatArray = npt.NDArray[np.float32]


class Artifact:
    """One loaded int8 file: ``answers(X)`` for samples ``[N, *input.shape]``."""

    def __init__(self, content: bytes, *, name: str = "", version: int | None = None) -> None:
        cls, self.runtime = interpreter_class()
        self.sha256 = sha256_hex(content)
        self.name = name or self.sha256[:12]
        self.version = version
        self.size = len(content)
        try:
            # tflite-runtime does not verify the flatbuffer: a garbled file would crash
            # the process rather than raise, so check its structure first.
            check_flatbuffer(content)
        except FlatbufferError as e:
            raise ModelRejected(f"{self.name}: not a valid TFLite file: {e}") from e
        try:
            interp = cls(model_content=content, num_threads=1)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelRejected(f"{self.name}: the runtime cannot load this model: {e}") from e
        inputs, outputs = interp.get_input_details(), interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelRejected(
                f"{self.name}: expected 1 input and 1 output, got {len(inputs)} and {len(outputs)}"
            )
        in_shape, out_shape = (
            [int(d) for d in inputs[0]["shape"]],
            [int(d) for d in outputs[0]["shape"]],
        )
        dtype = np.dtype(inputs[0]["dtype"]).name
        if (
            in_shape[:1] != [1]
            or len(out_shape) != 2
            or out_shape[0] != 1
            or dtype not in ("float32", "uint8")
        ):
            raise ModelRejected(
                f"{self.name}: expected a [1, ...] float32 or uint8 input and a [1, W] output, "
                f"got {in_shape} {dtype} -> {out_shape}"
            )
        self.input = TensorSpec(
            shape=in_shape[1:], dtype="uint8" if dtype == "uint8" else "float32"
        )
        self.width = out_shape[1]
        self._interp = interp
        self._in = int(inputs[0]["index"])
        self._out = int(outputs[0]["index"])
        scale, zero_point = outputs[0]["quantization"]
        self._out_q = (float(scale), int(zero_point)) if scale else None
        self._lock = threading.Lock()

    def answers(self, X: npt.ArrayLike) -> FloatArray:
        """Probabilities (classifier) or outputs (regressor) for each sample of ``X``."""
        batch = np.asarray(X).reshape(-1, *self.input.shape).astype(self.input.np_dtype, copy=False)
        out = np.zeros((len(batch), self.width), np.float32)
        with self._lock:
            for i in range(len(batch)):
                self._interp.set_tensor(self._in, batch[i : i + 1])
                self._interp.invoke()
                out[i] = self._row(self._interp.get_tensor(self._out)[0])
        return out

    def _row(self, row: npt.NDArray[Any]) -> FloatArray:
        if self._out_q is None:
            return np.asarray(row, np.float32)
        scale, zero_point = self._out_q
        return (row.astype(np.float32) - zero_point) * np.float32(scale)
