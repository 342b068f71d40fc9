"""Export: torch model -> float TFLite -> static int8 -> numeric check in the edge runtime.

The file takes one sample of the model's input (``[1, *shape]``, float32, or
uint8 for camera frames) and keeps float IO around an all-int8 core
(docs/ARCHITECTURE.md, "Model files"): the quantizer's static int8 recipe covers
every op except the graph's input and output, the input's cast and scaling
(MUL/SUB/ADD/DIV on the input alone), a classifier's final SOFTMAX and a
regressor's de-standardization (``cloud.export.int8_check``), so the quantizer
inserts one QUANTIZE after the input and one DEQUANTIZE before the output.

Nothing leaves this module unchecked: every compute op of the int8 bytes must
take int8 activations and every shape must be static (never a dynamic-range or
float model), the file is loaded in the interpreter the edges run, and its
answers must agree with the torch model on the calibration and probe inputs
(the same class, or, for a regressor, outputs within a few percent of their
range). The probe set in the manifest holds the int8 file's own outputs in that
runtime, so an edge can tell whether its runtime computes the same thing.
"""

from __future__ import annotations

import os

# Set before litert_torch / the quantizer are imported, so that neither prints
# progress bars or TF start-up chatter (the Makefile exports the same).
os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import contextlib
import io
import logging
import re
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from cloud.export.artifact import Artifact
from cloud.export.errors import ExportError, NumericCheckError
from cloud.export.graph import Graph
from cloud.export.int8_check import check_all_int8, float_by_design
from cloud.learning.models import TaskModel, predict
from shared.codec import sha256_hex
from shared.durable import atomic_write
from shared.errors import ModelRejected
from shared.messages import ProbeSet
from shared.task import TaskSpec
from shared.tensors import TensorSpec

__all__ = [
    "ExportError",
    "ExportResult",
    "NumericCheckError",
    "agreement",
    "check_int8",
    "export_int8",
    "probe_set",
    "quantize_static_int8",
    "to_float_tflite",
]

logger = logging.getLogger(__name__)

#: Ops left in float everywhere: the graph's IO and a classifier's softmax.
FLOAT_OPS = ("SOFTMAX", "INPUT", "OUTPUT")
#: Tolerances written into the manifest's probe set: loose enough for
#: tflite-runtime 2.14 on a Pi, tight enough to catch a runtime that computes
#: something else. A regressor's error bound is this share of its outputs' range.
PROBE_MIN_AGREEMENT = 0.95
PROBE_MAX_ABS_ERROR = 0.05
#: A regressor's int8 answer agrees with the torch model's when every output is within
#: this share of that output's range over the checked inputs.
REGRESSION_AGREEMENT = 0.05

# The converter and the quantizer keep global state; one export at a time.
_LOCK = threading.Lock()


@dataclass(frozen=True)
class ExportResult:
    content: bytes
    sha256: str
    probe: ProbeSet
    agreement: float  # int8 (edge runtime) vs torch: same class, or outputs within tolerance
    runtime: str
    seconds: float


def export_int8(
    model: TaskModel,
    calibration_X: npt.ArrayLike,
    probe_X: npt.ArrayLike,
    *,
    min_agreement: float = 0.95,
) -> ExportResult:
    """Convert, quantize and check ``model``; raise ExportError (NotInt8, NumericCheckError)."""
    start = time.perf_counter()
    model = model.eval()
    spec = model.input_spec
    calibration = as_samples(calibration_X, spec)
    probe_samples = as_samples(probe_X, spec)
    if len(calibration) == 0 or len(probe_samples) == 0:
        raise ExportError("export needs at least one calibration and one probe sample")
    with _LOCK:
        float_bytes = to_float_tflite(model, spec)
    checked = np.concatenate([calibration, probe_samples])
    artifact, content, agreed = _best_calibration(
        model, float_bytes, calibration, checked, min_agreement
    )
    probe = probe_set(artifact, probe_samples, model.task)
    seconds = time.perf_counter() - start
    logger.info(
        "exported int8 model %s (%d bytes, agreement %.3f) in %.1fs",
        artifact.sha256[:12],
        len(content),
        agreed,
        seconds,
    )
    return ExportResult(content, sha256_hex(content), probe, agreed, artifact.runtime, seconds)


def _best_calibration(
    model: TaskModel,
    float_bytes: bytes,
    calibration: npt.NDArray[Any],
    checked: npt.NDArray[Any],
    min_agreement: float,
) -> tuple[Artifact, bytes, float]:
    """The int8 file whose answers agree best with the torch model on ``checked``.

    A classifier's argmax barely notices "smoothed" ranges' clipping, and they give the
    bulk of the activations more resolution; but in a small model a few clipped
    activations can move many answers (River's Bananas, two features: 44% agreement,
    100% with min_max; SEA's three: 0.94 and 0.997, 0.935 and 0.990 accurate). So a
    classifier whose smoothed file does not agree on every checked input is calibrated
    with min_max too, and the better of the two is kept (ties: smoothed); a regressor
    takes min_max, its true ranges.
    """
    tries = ("smoothed", "min_max") if model.task.is_classification else ("min_max",)
    best: tuple[Artifact, bytes, float] | None = None
    refused: NumericCheckError | None = None
    for ranges in tries:
        with _LOCK:
            content = quantize_static_int8(float_bytes, calibration, ranges=ranges)
        try:
            artifact, agreed = check_int8(model, content, checked, min_agreement)
        except NumericCheckError as e:
            refused = e
            logger.info("%s ranges refused (%s)", ranges, e)
            continue
        logger.debug("%s ranges: agreement %.3f", ranges, agreed)
        if best is None or agreed > best[2]:
            best = (artifact, content, agreed)
        if agreed >= 1.0:
            break
    if best is None:
        raise refused or NumericCheckError("no int8 calibration was tried")
    return best


def preflight(model: TaskModel, calibration_X: npt.ArrayLike) -> bytes:
    """Convert and quantize a (fresh) model once and check that the file is all-int8 and
    loads: what the trainer runs before any training. Answers are not compared (an
    untrained model's classes are near ties)."""
    calibration = as_samples(calibration_X, model.input_spec)
    with _LOCK:
        content = quantize_static_int8(to_float_tflite(model.eval(), model.input_spec), calibration)
    check_all_int8(content)
    _load(content, "preflight")
    return content


def as_samples(X: npt.ArrayLike, spec: TensorSpec) -> npt.NDArray[Any]:
    """``X`` as a contiguous batch of ``spec``'s samples, in its dtype."""
    return np.ascontiguousarray(np.asarray(X).reshape(-1, *spec.shape), spec.np_dtype)


def probe_set(artifact: Artifact, probe_X: npt.ArrayLike, task: TaskSpec) -> ProbeSet:
    """The manifest's probe set: the int8 file's own outputs in this runtime, checked once."""
    X = as_samples(probe_X, artifact.input)
    expected = artifact.answers(X)
    if task.is_classification:
        min_agreement, max_error = PROBE_MIN_AGREEMENT, PROBE_MAX_ABS_ERROR
    else:  # argmax means nothing for outputs; the bound is in the outputs' units
        spread = float(expected.max() - expected.min()) if expected.size else 0.0
        min_agreement, max_error = 0.0, PROBE_MAX_ABS_ERROR * max(1.0, spread)
    probe = ProbeSet(
        inputs=X.reshape(len(X), -1).astype(np.float32).tolist(),
        expected=expected.tolist(),
        min_agreement=min_agreement,
        max_abs_error=max_error,
    )
    again = artifact.answers(X)  # the file must pass its own probe, or no edge will take it
    if not np.all(np.isfinite(again)) or float(np.mean(np.abs(again - expected))) > max_error:
        raise NumericCheckError(f"{artifact.name}: does not pass its own probe set")
    return probe


def convert_float(model: TaskModel) -> bytes:
    """``to_float_tflite`` under the export lock (the converter keeps global state)."""
    with _LOCK:
        return to_float_tflite(model, model.input_spec)


def calibrate_int8(
    float_bytes: bytes, calibration_X: npt.ArrayLike, task: TaskSpec | None = None
) -> bytes:
    """``quantize_static_int8`` under the export lock (the quantizer keeps global state),
    with the ranges ``export_int8`` takes for ``task`` (a regressor's true ranges)."""
    ranges = "min_max" if task is not None and not task.is_classification else "smoothed"
    with _LOCK:
        return quantize_static_int8(float_bytes, calibration_X, ranges=ranges)


def to_float_tflite(model: torch.nn.Module, spec: TensorSpec | int) -> bytes:
    """Float TFLite bytes of ``model`` for one sample of ``spec`` (an int: that many floats)."""
    import litert_torch

    spec = TensorSpec.flat(spec) if isinstance(spec, int) else spec
    dtype = torch.uint8 if spec.dtype == "uint8" else torch.float32
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the converter's own deprecation noise
            example = torch.zeros((1, *spec.shape), dtype=dtype)
            edge_model = litert_torch.convert(model, (example,))
            return bytes(edge_model.model_content())
    except Exception as e:  # the converter raises anything from deep inside torch.export
        raise ExportError(conversion_failure(e)) from e


def conversion_failure(e: Exception) -> str:
    """The converter's error in one line, with a hint when the model's shapes depend on data."""
    text = str(e).strip().splitlines()
    first = text[0][:300] if text else ""
    dynamic = any(
        w in f"{type(e).__name__} {first}"
        for w in ("NonConcrete", "data-dependent", "dynamic", "symbolic")
    )
    hint = (
        "; a shape computed from the data (boolean masks, nonzero, ...) cannot be exported: "
        "edgeloop needs static shapes"
        if dynamic
        else ""
    )
    return f"TFLite conversion failed: {type(e).__name__}: {first}{hint}"


def quantize_static_int8(
    float_bytes: bytes, calibration_X: npt.ArrayLike, ranges: str = "smoothed"
) -> bytes:
    """Static int8 weights and activations, calibrated on ``calibration_X``; float IO, softmax,
    and the input's and output's scaling (``cloud.export.int8_check.float_by_design``).

    ``ranges``: "smoothed" is the quantizer's own calibration (a moving average of each
    sample's min and max: rare extremes are clipped, the common range keeps its
    resolution; a classifier's argmax barely notices the clipping). "min_max" takes every
    tensor's true range over the samples: a regressor's outputs are in the targets' units,
    and a moving average would clip every forecast beyond the recent samples' typical
    values (measured: a temperature model's int8 answers stuck at 44.6 for 46-48)."""
    import ai_edge_quantizer as aq
    from ai_edge_quantizer import calibrator, qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    graph = Graph.read(float_bytes)
    rm = recipe_manager.RecipeManager()
    rm.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 8, 8)
    for op in FLOAT_OPS:
        rm.add_quantization_config(
            ".*", getattr(qtyping.TFLOperationName, op), algorithm_key=AlgorithmName.NO_QUANTIZE
        )
    for scaling in float_by_design(graph):
        # The quantizer names an op by its output tensors, each followed by ";".
        scope = "".join(graph.tensors[i].name + ";" for i in scaling.outputs)
        rm.add_quantization_config(
            "^" + re.escape(scope) + "$",
            getattr(qtyping.TFLOperationName, scaling.name),
            algorithm_key=AlgorithmName.NO_QUANTIZE,
        )
    signature, input_name, dtype = _signature_input(float_bytes)
    samples = np.asarray(calibration_X).astype(dtype, copy=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = aq.Quantizer(float_bytes)
            q.load_quantization_recipe(rm.get_quantization_recipe())
            # Calibration draws a tqdm bar on sys.stderr that no option turns off; logging
            # handlers keep their own stream reference, so only the bar is swallowed.
            data = {signature: [{input_name: x[None]} for x in samples]}
            with contextlib.redirect_stderr(io.StringIO()):
                if ranges == "min_max":
                    calib = calibrator.Calibrator(float_bytes, qsv_update_func=_widest)
                    calib.calibrate(data, rm)
                    cal = calib.get_model_qsvs()
                else:
                    cal = q.calibrate(data)
            return bytes(q.quantize(cal, enable_progress_report=False).quantized_model)
    except Exception as e:  # the quantizer has no exception hierarchy of its own
        raise ExportError(f"int8 quantization failed: {type(e).__name__}: {e}") from e


def _widest(seen: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A tensor's range over every calibration sample so far (the quantizer's QSV update)."""
    if not seen:
        return new
    return {"min": np.minimum(seen["min"], new["min"]), "max": np.maximum(seen["max"], new["max"])}


def _signature_input(float_bytes: bytes) -> tuple[str, str, np.dtype[Any]]:
    """The float model's (signature key, input name, input dtype), read rather than assumed."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=float_bytes)
    signatures = interp.get_signature_list()
    if len(signatures) != 1:
        raise ExportError(f"expected one signature in the float model, found {list(signatures)}")
    ((key, sig),) = signatures.items()
    if len(sig["inputs"]) != 1:
        raise ExportError(f"expected one input in signature {key!r}, found {sig['inputs']}")
    dtype = np.dtype(interp.get_input_details()[0]["dtype"])
    return key, sig["inputs"][0], dtype


def agreement(task: TaskSpec, got: npt.NDArray[np.float32], want: npt.NDArray[np.float32]) -> float:
    """Share of samples on which two answers agree: the same class, or (regression) every
    output within ``REGRESSION_AGREEMENT`` of that output's range over the samples."""
    if len(got) == 0:
        return 1.0
    if task.is_classification:
        return float(np.mean(got.argmax(1) == want.argmax(1)))
    spread = np.maximum(want.max(axis=0) - want.min(axis=0), 1e-6)
    close = np.abs(got - want) <= REGRESSION_AGREEMENT * spread
    return float(np.mean(close.all(axis=1)))


def check_int8(
    model: TaskModel, content: bytes, X: npt.ArrayLike, min_agreement: float
) -> tuple[Artifact, float]:
    """All-int8, loads in the edge runtime, and agrees with ``model`` on ``X``."""
    check_all_int8(content)
    artifact = _load(content, "export")
    samples = as_samples(X, model.input_spec)
    if artifact.input != model.input_spec:
        raise NumericCheckError(
            f"exported file takes {artifact.input.describe()}, the model {model.input_spec.describe()}"
        )
    agreed = agreement(model.task, artifact.answers(samples), predict(model, samples))
    if agreed < min_agreement:
        raise NumericCheckError(
            f"int8 file agrees with the torch model on {agreed:.1%} of {len(samples)} inputs "
            f"in {artifact.runtime}; need {min_agreement:.1%}"
        )
    return artifact, agreed


def _load(content: bytes, name: str) -> Artifact:
    try:
        return Artifact(content, name=name)
    except ModelRejected as e:
        raise NumericCheckError(f"the edge runtime refuses the exported file: {e}") from e


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (creating its directory) so that readers see the old
    file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
