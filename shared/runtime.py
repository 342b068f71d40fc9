"""The TFLite interpreter wrapper: one loaded model, ready to answer.

ai-edge-litert is preferred; tflite-runtime 2.14 is used when it is what the
board has. Static int8 models take int8 inputs and give int8 outputs: the
wrapper quantizes and dequantizes with the tensor's own parameters, so callers
always pass float features and get float probabilities.

A ``TFLiteModel`` is thread-safe (one lock around set/invoke/get, since a
TFLite interpreter is not). Hot swap is the caller building a new one off the
request path and replacing a reference.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.codec import sha256_hex
from shared.errors import ModelRejected
from shared.messages import ProbeSet
from shared.tflite import HEAVY_OPS, FlatbufferError, check_flatbuffer

logger = logging.getLogger(__name__)

_RUNTIMES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
)

FloatArray = npt.NDArray[np.float32]


@cache
def interpreter_class(prefer: str | None = None) -> tuple[Any, str]:
    """The Interpreter class to use and a 'name version' string for reports.

    ``prefer`` names a distribution ('ai-edge-litert' or 'tflite-runtime') to try first.
    """
    order = sorted(_RUNTIMES, key=lambda r: r[1] != prefer) if prefer else list(_RUNTIMES)
    errors = []
    for module, dist in order:
        try:
            cls = importlib.import_module(module).Interpreter
        except ImportError as e:
            errors.append(f"{dist}: {e}")
            continue
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        return cls, f"{dist} {version}"
    raise ImportError(
        "no TFLite runtime: install ai-edge-litert (pip install 'edgeloop[edge]') "
        "or tflite-runtime. Tried: " + "; ".join(errors)
    )


@dataclass(frozen=True)
class _Quant:
    scale: float
    zero_point: int
    dtype: Any

    @property
    def is_quantized(self) -> bool:
        return self.scale != 0.0


def _quant_of(detail: dict[str, Any]) -> _Quant:
    scale, zero_point = detail["quantization"]
    return _Quant(float(scale), int(zero_point), detail["dtype"])


class TFLiteModel:
    """A TFLite classifier: float features in, class probabilities out.

    The model must take one input of shape [1, F] and give one output of shape
    [1, C] holding class probabilities.
    """

    def __init__(
        self,
        content: bytes,
        *,
        version: int | None = None,
        name: str = "",
        num_threads: int = 1,
        runtime: str | None = None,
    ) -> None:
        cls, self.runtime = interpreter_class(runtime)
        self.sha256 = sha256_hex(content)
        self.version = version
        self.name = name or self.sha256[:12]
        self.size = len(content)
        try:
            # tflite-runtime does not verify the flatbuffer: a garbled file would
            # crash the process rather than raise, so check its structure first.
            check_flatbuffer(content)
        except FlatbufferError as e:
            raise ModelRejected(f"{self.name}: not a valid TFLite file: {e}") from e
        try:
            interp = cls(model_content=content, num_threads=num_threads)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelRejected(f"{self.name}: the runtime cannot load this model: {e}") from e
        inputs, outputs = interp.get_input_details(), interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelRejected(
                f"{self.name}: expected 1 input and 1 output, got {len(inputs)} and {len(outputs)}"
            )
        in_shape, out_shape = list(inputs[0]["shape"]), list(outputs[0]["shape"])
        if len(in_shape) != 2 or in_shape[0] != 1 or len(out_shape) != 2 or out_shape[0] != 1:
            raise ModelRejected(
                f"{self.name}: expected shapes [1,F] -> [1,C], got {in_shape} -> {out_shape}"
            )
        self._interp = interp
        self._lock = threading.Lock()
        self._in_index = int(inputs[0]["index"])
        self._out_index = int(outputs[0]["index"])
        self._in_q = _quant_of(inputs[0])
        self._out_q = _quant_of(outputs[0])
        self.num_features = int(in_shape[1])
        self.num_classes = int(out_shape[1])
        self.input_dtype = np.dtype(inputs[0]["dtype"]).name
        # Precomputed so that the hot path is a handful of numpy calls.
        self._in_inv_scale = np.float32(1.0 / self._in_q.scale) if self._in_q.is_quantized else None
        if self._in_q.is_quantized:
            info = np.iinfo(self._in_q.dtype)
            self._in_lo, self._in_hi = float(info.min), float(info.max)
        self._in_buf = np.zeros((1, self.num_features), dtype=self._in_q.dtype)

    # -- inspection ---------------------------------------------------------

    def heavy_ops_int8(self) -> bool:
        """True when every compute-heavy op takes int8 activations.

        This is what separates a static int8 model from a dynamic-range one (float
        activations with int8 weights), which edgeloop never serves.
        """
        found = False
        for op in self._interp._get_ops_details():
            if op["op_name"] not in HEAVY_OPS:
                continue
            found = True
            first = int(op["inputs"][0])
            dtype = np.dtype(self._interp._get_tensor_details(first, 0)["dtype"]).name
            if dtype not in ("int8", "int16"):
                return False
        return found

    # -- inference ----------------------------------------------------------

    def predict_proba(self, x: FloatArray) -> FloatArray:
        """Class probabilities for one sample of ``num_features`` floats.

        The model's output is taken as probabilities (edgeloop exports the softmax
        in the graph); int8 outputs are dequantized.
        """
        if self._in_inv_scale is None:
            x = np.asarray(x, np.float32).reshape(1, self.num_features)
            with self._lock:
                self._interp.set_tensor(self._in_index, x)
                self._interp.invoke()
                out = self._interp.get_tensor(self._out_index)
        else:
            # round half to even like TFLite; clip before the cast so nothing wraps
            q = np.rint(
                np.asarray(x, np.float32).reshape(1, self.num_features) * self._in_inv_scale
            )
            q += self._in_q.zero_point
            np.clip(q, self._in_lo, self._in_hi, out=q)
            with self._lock:
                self._in_buf[...] = q
                self._interp.set_tensor(self._in_index, self._in_buf)
                self._interp.invoke()
                out = self._interp.get_tensor(self._out_index)
        row: FloatArray = out[0]
        if self._out_q.is_quantized:
            return (row.astype(np.float32) - self._out_q.zero_point) * np.float32(self._out_q.scale)
        return row

    def row_predictor(self) -> Callable[[FloatArray], FloatArray]:
        """A function from a float32 array of shape [1, F] to the output row.

        This is the serving chain's hot path. For a float-IO model it is
        set/invoke/get under the interpreter lock and nothing else, with every
        attribute bound once, because at ~5 µs per invoke a few hundred
        nanoseconds of Python are a measurable share. Other models go through
        ``predict_proba`` and its (de)quantization.
        """
        if (
            self._in_inv_scale is not None
            or self._out_q.is_quantized
            or self.input_dtype != "float32"
        ):
            return self.predict_proba
        native = getattr(self._interp, "_interpreter", None)
        if all(hasattr(native, m) for m in ("SetTensor", "Invoke", "GetTensor")):
            return self._native_row_predictor()
        return self._public_row_predictor()

    def _public_row_predictor(self) -> Callable[[FloatArray], FloatArray]:
        """``row_predictor`` through the interpreter's public methods."""
        acquire, release = self._lock.acquire, self._lock.release
        in_index, out_index = self._in_index, self._out_index
        interp = self._interp
        set_tensor, invoke, get_tensor = interp.set_tensor, interp.invoke, interp.get_tensor

        def run_public(x: FloatArray) -> FloatArray:
            acquire()  # bound acquire/release: half the cost of a with block
            try:
                set_tensor(in_index, x)
                invoke()
                out: FloatArray = get_tensor(out_index)
            finally:
                release()
            return out.ravel()

        return run_public

    def _native_row_predictor(self) -> Callable[[FloatArray], FloatArray]:
        """``row_predictor`` through the native interpreter the Python one wraps.

        Both runtimes' Python Interpreter wraps a native one and, on every
        invoke(), counts references to it to refuse running while a numpy view
        from tensor() is alive. edgeloop never takes such views (get_tensor
        copies), so the hot path calls the native wrapper directly: about a third
        of the wrapper's overhead. It looks the native object up on each call
        rather than holding it, so that the public API's reference check keeps
        working for everything else (probe checks, predict_proba).
        """
        acquire, release = self._lock.acquire, self._lock.release
        in_index, out_index = self._in_index, self._out_index
        interp = self._interp

        def run(x: FloatArray) -> FloatArray:
            acquire()
            try:
                native = interp._interpreter
                native.SetTensor(in_index, x)
                native.Invoke()
                out: FloatArray = native.GetTensor(out_index, 0)
            finally:
                release()
            return out.ravel()  # a view of the fresh copy get_tensor made: cheaper than out[0]

        return run

    def predict_proba_batch(self, xs: Sequence[Sequence[float]] | FloatArray) -> FloatArray:
        arr = np.asarray(xs, dtype=np.float32)
        return (
            np.stack([self.predict_proba(row) for row in arr])
            if len(arr)
            else np.zeros((0, self.num_classes), np.float32)
        )

    def warm_up(self, n: int = 3) -> None:
        """A few invokes so that the first real request does not pay for lazy setup."""
        x = np.zeros(self.num_features, np.float32)
        for _ in range(n):
            self.predict_proba(x)

    def check_probe(self, probe: ProbeSet) -> tuple[float, float]:
        """Run ``probe`` and return (argmax agreement, mean |p - expected|).

        Raises ModelRejected when either is outside the probe's tolerance: a file
        that verifies but answers wrongly in this runtime never serves.
        """
        if not probe.inputs:
            raise ModelRejected(f"{self.name}: probe set is empty")
        got = self.predict_proba_batch(probe.inputs)
        want = np.asarray(probe.expected, np.float32)
        if got.shape != want.shape:
            raise ModelRejected(
                f"{self.name}: probe outputs have shape {got.shape}, expected {want.shape}"
            )
        if not np.all(np.isfinite(got)):
            raise ModelRejected(f"{self.name}: non-finite outputs on the probe set")
        agreement = float(np.mean(got.argmax(1) == want.argmax(1)))
        mae = float(np.mean(np.abs(got - want)))
        if agreement < probe.min_agreement or mae > probe.max_abs_error:
            raise ModelRejected(
                f"{self.name}: probe check failed in {self.runtime}: agreement {agreement:.3f} "
                f"(need {probe.min_agreement}), mean abs error {mae:.4f} (max {probe.max_abs_error})"
            )
        return agreement, mae
