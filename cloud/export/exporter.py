"""Export: torch model -> float TFLite -> static int8 -> numeric check in the edge runtime.

The file keeps float IO around an all-int8 core (docs/ARCHITECTURE.md, "Model
files"): the quantizer's static int8 recipe covers every op except the graph
input/output, the input scaling (MUL/SUB/ADD/DIV) and the final SOFTMAX, so the
quantizer inserts one QUANTIZE after the input and one DEQUANTIZE before the
softmax.

Nothing leaves this module unchecked: the int8 bytes are loaded with
``shared.runtime.TFLiteModel`` (exactly what the edges run), every heavy op must
take int8 activations (never a dynamic-range or float model), and the argmax
must agree with the torch model on the calibration and probe inputs. The probe
set in the manifest holds the int8 model's own outputs in that runtime, so an
edge can tell whether its runtime computes the same thing.
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
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cloud.learning.models import predict_proba
from shared.codec import sha256_hex
from shared.durable import atomic_write
from shared.errors import EdgeloopError, ModelRejected
from shared.messages import ProbeSet
from shared.runtime import TFLiteModel

logger = logging.getLogger(__name__)

#: Ops left in float around the int8 core.
FLOAT_OPS = ("SOFTMAX", "MUL", "SUB", "ADD", "DIV", "INPUT", "OUTPUT")
#: Tolerances written into the manifest's probe set: loose enough for
#: tflite-runtime 2.14 on a Pi, tight enough to catch a runtime that computes
#: something else.
PROBE_MIN_AGREEMENT = 0.95
PROBE_MAX_ABS_ERROR = 0.05

# The converter and the quantizer keep global state; one export at a time.
_LOCK = threading.Lock()


class ExportError(EdgeloopError):
    """The model could not be converted or quantized."""


class NumericCheckError(ExportError):
    """The int8 file loads but is not what the torch model computes (or not all-int8)."""


@dataclass(frozen=True)
class ExportResult:
    content: bytes
    sha256: str
    probe: ProbeSet
    agreement: float  # argmax agreement of int8 (edge runtime) vs torch
    runtime: str
    seconds: float


def export_int8(
    model: nn.Module,
    calibration_X: npt.NDArray[np.float32],
    probe_X: npt.NDArray[np.float32],
    *,
    min_agreement: float = 0.95,
) -> ExportResult:
    """Convert, quantize and check ``model``; raise ExportError or NumericCheckError."""
    start = time.perf_counter()
    model = model.eval()
    calibration_X = np.ascontiguousarray(calibration_X, np.float32)
    probe_X = np.ascontiguousarray(probe_X, np.float32)
    if len(calibration_X) == 0 or len(probe_X) == 0:
        raise ExportError("export needs at least one calibration and one probe sample")
    with _LOCK:
        float_bytes = to_float_tflite(model, calibration_X.shape[1])
        content = quantize_static_int8(float_bytes, calibration_X)
    tfl, agreement = check_int8(
        model, content, np.concatenate([calibration_X, probe_X]), min_agreement
    )
    probe = probe_set(tfl, probe_X)
    seconds = time.perf_counter() - start
    logger.info(
        "exported int8 model %s (%d bytes, agreement %.3f) in %.1fs",
        tfl.sha256[:12],
        len(content),
        agreement,
        seconds,
    )
    return ExportResult(content, sha256_hex(content), probe, agreement, tfl.runtime, seconds)


def probe_set(tfl: TFLiteModel, probe_X: npt.NDArray[np.float32]) -> ProbeSet:
    """The manifest's probe set: the int8 file's own outputs in this runtime, checked once."""
    probe = ProbeSet(
        inputs=probe_X.tolist(),
        expected=tfl.predict_proba_batch(probe_X).tolist(),
        min_agreement=PROBE_MIN_AGREEMENT,
        max_abs_error=PROBE_MAX_ABS_ERROR,
    )
    tfl.check_probe(probe)  # the file must pass its own probe, or no edge will take it
    return probe


def convert_float(model: nn.Module, num_features: int) -> bytes:
    """``to_float_tflite`` under the export lock (the converter keeps global state)."""
    with _LOCK:
        return to_float_tflite(model, num_features)


def calibrate_int8(float_bytes: bytes, calibration_X: npt.NDArray[np.float32]) -> bytes:
    """``quantize_static_int8`` under the export lock (the quantizer keeps global state)."""
    with _LOCK:
        return quantize_static_int8(float_bytes, calibration_X)


def to_float_tflite(model: nn.Module, num_features: int) -> bytes:
    """Float TFLite bytes of ``model`` for one sample of ``num_features``."""
    import litert_torch

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the converter's own deprecation noise
            edge_model = litert_torch.convert(model, (torch.zeros(1, num_features),))
            return bytes(edge_model.model_content())
    except Exception as e:  # the converter raises anything from deep inside torch.export
        raise ExportError(f"TFLite conversion failed: {type(e).__name__}: {e}") from e


def quantize_static_int8(float_bytes: bytes, calibration_X: npt.NDArray[np.float32]) -> bytes:
    """Static int8 weights and activations, float IO and softmax, calibrated on ``calibration_X``."""
    import ai_edge_quantizer as aq
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    rm = recipe_manager.RecipeManager()
    rm.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 8, 8)
    for op in FLOAT_OPS:
        rm.add_quantization_config(
            ".*", getattr(qtyping.TFLOperationName, op), algorithm_key=AlgorithmName.NO_QUANTIZE
        )
    signature, input_name = _signature_input(float_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = aq.Quantizer(float_bytes)
            q.load_quantization_recipe(rm.get_quantization_recipe())
            # Calibration draws a tqdm bar on sys.stderr that no option turns off; logging
            # handlers keep their own stream reference, so only the bar is swallowed.
            with contextlib.redirect_stderr(io.StringIO()):
                cal = q.calibrate({signature: [{input_name: x[None, :]} for x in calibration_X]})
            return bytes(q.quantize(cal, enable_progress_report=False).quantized_model)
    except Exception as e:  # the quantizer has no exception hierarchy of its own
        raise ExportError(f"int8 quantization failed: {type(e).__name__}: {e}") from e


def _signature_input(float_bytes: bytes) -> tuple[str, str]:
    """The float model's (signature key, input name), read rather than assumed."""
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_content=float_bytes).get_signature_list()
    if len(signatures) != 1:
        raise ExportError(f"expected one signature in the float model, found {list(signatures)}")
    ((key, sig),) = signatures.items()
    if len(sig["inputs"]) != 1:
        raise ExportError(f"expected one input in signature {key!r}, found {sig['inputs']}")
    return key, sig["inputs"][0]


def check_int8(
    model: nn.Module, content: bytes, X: npt.NDArray[np.float32], min_agreement: float
) -> tuple[TFLiteModel, float]:
    """Load ``content`` in the edge runtime and compare it with ``model`` on ``X``."""
    try:
        tfl = TFLiteModel(content, name="export")
    except ModelRejected as e:
        raise NumericCheckError(f"the edge runtime refuses the exported file: {e}") from e
    if not tfl.heavy_ops_int8():
        raise NumericCheckError(
            "exported file is not all-int8 (a dynamic-range or float model); refusing it"
        )
    if tfl.num_features != X.shape[1]:
        raise NumericCheckError(
            f"exported file takes {tfl.num_features} features, expected {X.shape[1]}"
        )
    got = tfl.predict_proba_batch(X)
    want = predict_proba(model, X)
    agreement = float(np.mean(got.argmax(1) == want.argmax(1)))
    if agreement < min_agreement:
        raise NumericCheckError(
            f"int8 file agrees with the torch model on {agreement:.1%} of {len(X)} inputs "
            f"in {tfl.runtime}; need {min_agreement:.1%}"
        )
    return tfl, agreement


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (creating its directory) so that readers see the old
    file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
