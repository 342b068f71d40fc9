"""The TFLite interpreter wrapper: one loaded model, ready to answer.

ai-edge-litert is preferred; tflite-runtime 2.14 is used when it is what the
board has. A model takes samples of its input (``TensorSpec``: any shape, float32
or uint8; uint8 frames go in as they are) and answers with floats: class
probabilities or a regressor's outputs (``TaskSpec``). A file with int8 input or
output is quantized and dequantized with the tensor's own parameters, so callers
never see int8. ``answers`` takes a batch.

A ``TFLiteModel`` is thread-safe (one lock around set/invoke/get, since a
TFLite interpreter is not). Hot swap is the caller building a new one off the
request path and replacing a reference. Samples go in and answers come out
through numpy views of the interpreter's own buffers where the runtime allows it
(see ``_views_of``): for a model whose invoke takes 2 µs, set_tensor and
get_tensor were a sixth of it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.codec import sha256_hex
from shared.errors import ModelRejected
from shared.messages import ProbeSet
from shared.task import TaskSpec
from shared.tensors import TensorSpec
from shared.tflite import HEAVY_OPS, FlatbufferError, check_flatbuffer

logger = logging.getLogger(__name__)

_RUNTIMES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
)

FloatArray = npt.NDArray[np.float32]
#: A way to answer batches of one size: the answers ``[n, W]`` to ``[n, *input shape]``
#: samples of the input's dtype, and their sum, which is NaN or infinite when any answer
#: is (or, rarely, when the float32 sum of finite answers overflows): one float that
#: tells a caller whether to look at every answer.
BatchWay = Callable[[npt.NDArray[Any]], tuple[FloatArray, float]]

#: Largest batch answered by one invoke of a resized interpreter (larger ones go in chunks).
MAX_RESIZED = 64
#: Batch sizes whose way (resized or looped) a model remembers; others loop.
MAX_BATCH_SIZES = 8


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


@dataclass(frozen=True, slots=True)
class _Views:
    """An allocated interpreter's way in and out without its Python wrapper."""

    inp: npt.NDArray[Any]  # the input tensor's buffer, [n, *input shape]: written in place
    out: npt.NDArray[Any]  # the output tensor's buffer, [n, W]: copied out after each invoke
    invoke: Callable[[], None]  # the native interpreter's Invoke


def _views_of(interp: Any, in_index: int, out_index: int) -> _Views | None:
    """Persistent numpy views of ``interp``'s input and output buffers and its native
    invoke; None when the runtime has no native interpreter to call (then the public
    set_tensor / invoke / get_tensor are used) or when the output moves on invoke.

    Why: set_tensor and get_tensor check their arguments and copy through the
    wrapper, a few hundred nanoseconds each; writing the sample into the input's
    buffer and copying the answer out of the output's is the same copy without
    them. The public invoke() refuses to run while such a view is alive (each view
    holds a reference to the native interpreter, which invoke() counts), so the
    invokes go to the native interpreter itself (``_interpreter.Invoke``, in both
    ai-edge-litert and tflite-runtime).

    Why that is safe: what the public check protects against is a view left
    pointing into memory the interpreter has reallocated, which happens only in
    allocate_tensors, resize_tensor_input, or an invoke that reallocates a dynamic
    tensor. ``interp`` must be allocated before this is called and never be resized
    or reallocated afterwards: a ``TFLiteModel`` allocates its interpreter once, and
    each batch size gets an interpreter of its own, resized and allocated before its
    views are taken (``_resized_for``). A file whose output is a dynamic tensor is
    caught here: its buffer moves on the first invoke, and the public API is kept.
    """
    native: Any = getattr(interp, "_interpreter", None)
    if not callable(getattr(native, "Invoke", None)):
        return None
    try:
        inp = interp.tensor(in_index)()
        out = interp.tensor(out_index)()
        inp[...] = 0
        native.Invoke()
        moved = _address(interp.tensor(out_index)()) != _address(out)
    except (ValueError, RuntimeError) as e:
        logger.debug("the interpreter's buffers cannot be used directly: %s", e)
        return None
    if moved:
        logger.debug("the output tensor moved on invoke: the public API answers")
        return None
    return _Views(inp, out, native.Invoke)


def _address(a: npt.NDArray[Any]) -> int:
    address: int = a.__array_interface__["data"][0]
    return address


class TFLiteModel:
    """A TFLite model: one sample (or a batch) of its input in, its answers out.

    The file takes one input of shape [1, *shape] (float32, uint8, or int8 with
    its quantization, which the wrapper applies to float samples) and gives one
    output [1, W]: class probabilities (classification) or the outputs
    (regression), dequantized when the file's output is int8. ``input`` and
    ``task`` are what the manifest says the file is; when given, a file that
    disagrees is refused. Without them the file's own input is used and the task
    is a classification (what every model was before tensor inputs).
    """

    def __init__(
        self,
        content: bytes,
        *,
        version: int | None = None,
        name: str = "",
        num_threads: int = 1,
        runtime: str | None = None,
        input: TensorSpec | None = None,
        task: TaskSpec | None = None,
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
        in_shape = [int(d) for d in inputs[0]["shape"]]
        out_shape = [int(d) for d in outputs[0]["shape"]]
        file_dtype = np.dtype(inputs[0]["dtype"]).name
        if (
            not 2 <= len(in_shape) <= 5
            or in_shape[0] != 1
            or len(out_shape) != 2
            or out_shape[0] != 1
            or file_dtype not in ("float32", "uint8", "int8")
        ):
            raise ModelRejected(
                f"{self.name}: expected a [1, ...] float32, uint8 or int8 input and a [1, W] "
                f"output, got {in_shape} {file_dtype} -> {out_shape}"
            )
        self._interp = interp
        self._lock = threading.Lock()
        # For the resized copies that answer batches (see answers).
        self._cls, self._content, self._num_threads = cls, content, num_threads
        self._resized: dict[int, BatchWay | None] = {}
        self._resized_lock = threading.Lock()
        self._in_index = int(inputs[0]["index"])
        self._out_index = int(outputs[0]["index"])
        self._in_q = _quant_of(inputs[0])
        self._out_q = _quant_of(outputs[0])
        # uint8 frames go in as they are (the graph's first op scales them); only an
        # int8 input is quantized here, from float samples.
        spec = TensorSpec(shape=in_shape[1:], dtype="uint8" if file_dtype == "uint8" else "float32")
        if input is not None and (input.shape != spec.shape or input.dtype != spec.dtype):
            raise ModelRejected(
                f"{self.name}: the file takes {spec.describe()} samples, "
                f"its manifest says {input.describe()}"
            )
        width = out_shape[1]
        if task is not None and task.width != width:
            raise ModelRejected(
                f"{self.name}: the file answers with {width} values, its manifest's "
                f"{task.kind} task has {task.width}"
            )
        self.input = spec
        self.task = task
        #: True for a classifier (the answers are class probabilities).
        self.classifies = task is None or task.is_classification
        self.width = width
        self.num_features = spec.size
        self.num_classes = width  # kept for classifier callers: the answer's width
        self.input_dtype = file_dtype
        self._batch_shape = (1, *spec.shape)
        # Precomputed so that the hot path is a handful of numpy calls.
        quantized_in = self._in_q.is_quantized and file_dtype == "int8"
        self._in_inv_scale = np.float32(1.0 / self._in_q.scale) if quantized_in else None
        if quantized_in:
            info = np.iinfo(self._in_q.dtype)
            self._in_lo, self._in_hi = float(info.min), float(info.max)
        self._in_dtype: np.dtype[Any] = np.dtype(self._in_q.dtype)
        # Taken last: from here on every invoke of ``interp`` goes through them.
        self._views = _views_of(interp, self._in_index, self._out_index)
        #: The way each batch size measured so far is answered (see ``answers``): a
        #: function from ``[n, *input.shape]`` in the input's dtype to ``[n, W]``.
        self.batch_ways: dict[int, BatchWay] = {}

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

    def predict_proba(self, x: npt.NDArray[Any]) -> FloatArray:
        """The answer (probabilities or outputs, ``[W]`` float32) for one sample: an
        array of the input's size, in its dtype (float samples of a uint8 input are
        rounded); int8 inputs are quantized and int8 outputs dequantized."""
        arr = np.asarray(x)
        if self._in_inv_scale is None:
            if arr.dtype != self._in_dtype:
                arr = _cast_to(arr, self._in_dtype)
            arr = arr.reshape(self._batch_shape)
        else:
            # round half to even like TFLite; clip before the cast so nothing wraps
            q = np.rint(np.asarray(arr, np.float32).reshape(self._batch_shape) * self._in_inv_scale)
            q += self._in_q.zero_point
            np.clip(q, self._in_lo, self._in_hi, out=q)
            arr = q.astype(self._in_dtype)
        views = self._views
        with self._lock:
            if views is not None:
                views.inp[...] = arr
                views.invoke()
                out = views.out.copy()
            else:
                self._interp.set_tensor(self._in_index, arr)
                self._interp.invoke()
                out = self._interp.get_tensor(self._out_index)
        row: FloatArray = self._dequantized(out)[0]
        return row

    def _dequantized(self, out: npt.NDArray[Any]) -> FloatArray:
        if self._out_q.is_quantized:
            return (out.astype(np.float32) - self._out_q.zero_point) * np.float32(self._out_q.scale)
        return out

    def row_predictor(self) -> Callable[[npt.NDArray[Any]], list[float]]:
        """A function from one sample, an array of the input's dtype and of its shape
        (or ``[1, *input.shape]``), to the answer: its ``W`` values as a list.

        This is the serving chain's hot path, and the caller's to check: through the
        interpreter's buffers (``_views_of``) an array of another dtype would be cast
        and one of another shape broadcast rather than refused. For a model whose
        input and output need no (de)quantization it is copy in / invoke / copy out
        under the interpreter lock and nothing else, with every attribute bound once,
        because at ~2 µs per invoke of a small MLP a few hundred nanoseconds of Python
        are a measurable share. A list because the values are read out of the output
        buffer once, as Python floats, which is cheaper than copying them into a new
        array (and what a finiteness check and a JSON answer read anyway). Other models
        go through ``predict_proba`` and its (de)quantization.
        """
        if self._in_inv_scale is not None or self._out_q.is_quantized:
            predict_proba = self.predict_proba

            def run_quantized(x: npt.NDArray[Any]) -> list[float]:
                values: list[float] = predict_proba(x).tolist()
                return values

            return run_quantized
        if self._views is not None:
            return self._view_row_predictor(self._views)
        return self._public_row_predictor()

    def _public_row_predictor(self) -> Callable[[npt.NDArray[Any]], list[float]]:
        """``row_predictor`` through the interpreter's public methods."""
        acquire, release = self._lock.acquire, self._lock.release
        in_index, out_index, shape = self._in_index, self._out_index, self._batch_shape
        interp = self._interp
        set_tensor, invoke, get_tensor = interp.set_tensor, interp.invoke, interp.get_tensor

        def run_public(x: npt.NDArray[Any]) -> list[float]:
            x = x.reshape(shape)
            acquire()  # bound acquire/release: half the cost of a with block
            try:
                set_tensor(in_index, x)
                invoke()
                out: FloatArray = get_tensor(out_index)
            finally:
                release()
            values: list[float] = out.ravel().tolist()
            return values

        return run_public

    def _view_row_predictor(self, views: _Views) -> Callable[[npt.NDArray[Any]], list[float]]:
        """``row_predictor`` through the interpreter's buffers: the sample is copied
        into the input's only row (a third cheaper than into the whole ``[1, ...]``
        buffer, which would broadcast it; a ``[1, ...]`` sample fits the row too), and
        the answer read out of the output's only row."""
        acquire, release = self._lock.acquire, self._lock.release
        inp, invoke, read = views.inp[0], views.invoke, views.out[0].tolist

        def run(x: npt.NDArray[Any]) -> list[float]:
            acquire()
            try:
                inp[...] = x
                invoke()
                out: list[float] = read()
            finally:
                release()
            return out

        return run

    def answers(self, batch: npt.NDArray[Any]) -> FloatArray:
        """The answers ``[N, W]`` to a batch ``[N, *input.shape]`` in the input's dtype.

        Two ways, chosen per batch size N by measuring both on the first batch of
        that size (three runs each, the faster kept, and only when they agree): one
        invoke per sample with the lock taken once, or one invoke of a copy of the
        interpreter resized to ``[N, *input.shape]`` (built lazily, cached per N, with
        its own lock). Measured at N = 32 on the zoo: the MLP answers ~3M samples/s
        resized vs ~250k looped (its fully connected kernel takes the batch as one
        matrix), while the convolutions gain nothing from a batch (dwcnn ~5k, cnn1d
        ~13k samples/s either way) and the digits CNN and the regression MLP cannot
        be resized at all (a reshape fixed to batch 1: allocate_tensors raises),
        so they loop. Batches larger than ``MAX_RESIZED`` go in chunks of it. The
        choice is kept in ``batch_ways``, which callers may use directly.
        """
        n = len(batch)
        if self._in_inv_scale is not None or self._out_q.is_quantized:
            rows = [self.predict_proba(row) for row in batch]
            return np.stack(rows) if rows else np.zeros((0, self.width), np.float32)
        samples = np.ascontiguousarray(batch, self._in_dtype).reshape(n, *self.input.shape)
        if n > MAX_RESIZED:
            whole = n - n % MAX_RESIZED
            parts = [
                self.answers(samples[k : k + MAX_RESIZED]) for k in range(0, whole, MAX_RESIZED)
            ]
            if whole < n:
                parts.append(self._looped(samples[whole:]))
            return np.concatenate(parts)
        way = self.batch_ways.get(n)
        if way is None and n > 1 and len(self._resized) < MAX_BATCH_SIZES:
            way = self._choose(n, samples)
        if way is None:  # sizes beyond the first few loop, rather than measure each time
            return self._looped(samples)
        return way(samples)[0]

    def _looped(self, samples: npt.NDArray[Any]) -> FloatArray:
        """``answers`` by one invoke per sample on the model's own interpreter."""
        n = len(samples)
        if n == 0:
            return np.zeros((0, self.width), np.float32)
        samples = samples.reshape(n, *self._batch_shape)
        # The [1, W] answers are collected and joined once: a third cheaper per
        # sample than copying each into a row of the result.
        rows: list[FloatArray] = []
        keep = rows.append
        views = self._views
        with self._lock:
            if views is not None:
                inp, invoke, copy = views.inp, views.invoke, views.out.copy
                for x in samples:
                    inp[...] = x
                    invoke()
                    keep(copy())
            else:
                interp = self._interp
                for x in samples:
                    interp.set_tensor(self._in_index, x)
                    interp.invoke()
                    keep(interp.get_tensor(self._out_index))
        out: FloatArray = np.concatenate(rows).astype(np.float32, copy=False)
        return out

    def _looped_summed(self, samples: npt.NDArray[Any]) -> tuple[FloatArray, float]:
        """``_looped`` as a ``BatchWay``."""
        out = self._looped(samples)
        return out, float(out.sum())

    def _choose(self, n: int, samples: npt.NDArray[Any]) -> BatchWay:
        """The resized way for batches of ``n`` when it is faster than the loop and
        answers the same, else the loop; measured once per ``n`` on ``samples``."""
        with self._resized_lock:
            if n in self.batch_ways:  # another thread measured it meanwhile
                return self.batch_ways[n]
            resized = self._resized_for(n)
            way = None
            if resized is not None:
                try:
                    t_resized, (got, _) = _timed(resized, samples)
                    t_looped, (want, _) = _timed(self._looped_summed, samples)
                except (ValueError, RuntimeError) as e:
                    logger.debug("%s: a batch of %d cannot run resized: %s", self.name, n, e)
                else:
                    same = got.shape == want.shape and np.allclose(got, want, atol=1e-5)
                    if same and t_resized < t_looped:
                        way = resized
                    logger.debug(
                        "%s: batch of %d: resized %.1f µs, looped %.1f µs, same answers %s",
                        self.name, n, t_resized * 1e6, t_looped * 1e6, same,
                    )  # fmt: skip
            self._resized[n] = way
            self.batch_ways[n] = chosen = way or self._looped_summed
            return chosen

    def _resized_for(self, n: int) -> BatchWay | None:
        """A copy of the interpreter taking ``[n, *input.shape]``, as a ``BatchWay``;
        None when the file cannot be resized (a reshape fixed to batch 1, say:
        allocate_tensors or the delegate's reshape raises)."""
        try:
            interp = self._cls(model_content=self._content, num_threads=self._num_threads)
            interp.resize_tensor_input(self._in_index, [n, *self.input.shape])
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            logger.debug("%s: cannot be resized to a batch of %d: %s", self.name, n, e)
            return None
        out_shape = [int(d) for d in interp.get_output_details()[0]["shape"]]
        if out_shape != [n, self.width]:
            return None
        lock = threading.Lock()
        views = _views_of(interp, self._in_index, self._out_index)
        if views is not None:
            acquire, release = lock.acquire, lock.release
            inp, invoke, copy = views.inp, views.invoke, views.out.copy
            # The answers' sum, read in the output buffer as a dot product with ones
            # into a result buffer of its own: a third of the cost of out.sum(), and
            # the result buffer is this interpreter's, so its lock guards it too.
            flat = views.out.reshape(-1)
            ones, total = np.ones(flat.size, np.float32), np.zeros((), np.float32)
            dot, item = flat.dot, total.item

            def run_views(samples: npt.NDArray[Any]) -> tuple[FloatArray, float]:
                # ``samples`` are n: a batch of another size would broadcast or raise
                acquire()
                try:
                    inp[...] = samples
                    invoke()
                    out: FloatArray = copy()
                    dot(ones, total)
                    summed: float = item()
                finally:
                    release()
                return out, summed

            return run_views
        in_index, out_index = self._in_index, self._out_index

        def run_public(samples: npt.NDArray[Any]) -> tuple[FloatArray, float]:
            with lock:
                interp.set_tensor(in_index, samples)
                interp.invoke()
                out: FloatArray = interp.get_tensor(out_index)
            return out, float(out.sum())

        return run_public

    def predict_proba_batch(self, xs: npt.ArrayLike) -> FloatArray:
        """``answers`` for samples given as rows of the input's size (probe inputs, say)."""
        arr = np.asarray(xs)
        if arr.size == 0:
            return np.zeros((0, self.width), np.float32)
        batch = arr.reshape(-1, *self.input.shape)
        if batch.dtype != self._in_dtype and self._in_inv_scale is None:
            batch = _cast_to(batch, self._in_dtype)
        return self.answers(batch)

    def warm_up(self, n: int = 3) -> None:
        """A few invokes so that the first real request does not pay for lazy setup."""
        x = np.zeros(self.input.shape, self._in_dtype if self._in_inv_scale is None else np.float32)
        for _ in range(n):
            self.predict_proba(x)

    def check_probe(self, probe: ProbeSet) -> tuple[float, float]:
        """Run ``probe`` and return (argmax agreement, mean |answer - expected|).

        Raises ModelRejected when either is outside the probe's tolerance: a file
        that verifies but answers wrongly in this runtime never serves. (A
        regressor's probe asks for no agreement: its argmax means nothing.)
        """
        if not probe.inputs:
            raise ModelRejected(f"{self.name}: probe set is empty")
        try:
            got = self.predict_proba_batch(probe.inputs)
        except ValueError as e:  # the inputs do not have the input's size
            raise ModelRejected(f"{self.name}: probe inputs do not fit the model: {e}") from e
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


def _timed(
    fn: BatchWay, samples: npt.NDArray[Any], runs: int = 3
) -> tuple[float, tuple[FloatArray, float]]:
    """The best of ``runs`` timings of ``fn(samples)`` (seconds) and its answer."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn(samples)
        best = min(best, time.perf_counter() - t0)
    return best, out


def _cast_to(arr: npt.NDArray[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """``arr`` in the input's dtype: float samples of a uint8 input are rounded and clipped."""
    if dtype == np.uint8 and arr.dtype.kind == "f":
        rounded: npt.NDArray[Any] = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return rounded
    cast: npt.NDArray[Any] = arr.astype(dtype)
    return cast
