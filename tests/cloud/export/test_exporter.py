"""Export: float TFLite -> static int8, checked in the edge runtime."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.data.datasets import Dataset
from cloud.export.exporter import (
    NumericCheckError,
    check_int8,
    export_int8,
    to_float_tflite,
    write_atomic,
)
from cloud.learning.models import predict
from cloud.learning.training import Hyperparameters, bootstrap
from shared.runtime import TFLiteModel
from shared.task import TaskSpec
from shared.tensors import TensorSpec


def test_int8_file_is_all_int8_and_agrees_with_torch(exported, trained, parts):
    tfl = TFLiteModel(exported.content)
    assert tfl.heavy_ops_int8()
    assert tfl.input_dtype == "float32"  # float IO around the int8 core
    assert exported.agreement >= 0.97
    X = parts.stream.X
    agree = (tfl.predict_proba_batch(X).argmax(1) == predict(trained.model, X).argmax(1)).mean()
    assert agree >= 0.97
    assert (tfl.predict_proba_batch(X).argmax(1) == parts.stream.y).mean() > 0.9


def test_probe_set_passes_the_edge_check_and_catches_a_different_model(exported, parts):
    tfl = TFLiteModel(exported.content)
    agreement, mae = tfl.check_probe(exported.probe)
    assert agreement == 1.0 and mae < 1e-6
    assert exported.probe.min_agreement == 0.95 and exported.probe.max_abs_error == 0.05
    assert len(exported.probe.inputs) == 32 and len(exported.probe.expected[0]) == 10


def test_export_is_deterministic(exported, trained, parts):
    again = export_int8(trained.model, parts.seed_train.X[:200], parts.seed_holdout.X[:32])
    assert again.content == exported.content and again.sha256 == exported.sha256


def test_a_float_model_is_refused(trained):
    float_bytes = to_float_tflite(trained.model, 64)
    with pytest.raises(NumericCheckError, match="not all-int8"):
        check_int8(trained.model, float_bytes, np.zeros((4, 64), np.float32), 0.9)


def test_disagreement_is_refused(exported, parts):
    other = bootstrap(
        parts.seed_train, Hyperparameters(epochs=1, batch_size=64, lr=1e-4, seed=9)
    ).model
    with pytest.raises(NumericCheckError, match="agrees with the torch model"):
        check_int8(other, exported.content, parts.stream.X[:300], 0.99)


def test_tabular_mlp_exports_with_float_standardization():
    rng = np.random.default_rng(0)
    X = rng.normal([5, -3, 100, 0], [1, 1, 20, 5], size=(400, 4)).astype(np.float32)
    y = ((X[:, 0] - 5) + (X[:, 2] - 100) / 20 > 0).astype(np.int64) + (X[:, 3] > 4)
    task = TaskSpec.classification(["a", "b", "c"])
    ds = Dataset("toy", "tabular", X, y, TensorSpec.flat(4), task)
    model = bootstrap(ds, Hyperparameters(epochs=20, batch_size=32, lr=3e-3, seed=0)).model
    result = export_int8(model, X[:150], X[150:170], min_agreement=0.95)
    tfl = TFLiteModel(result.content)
    assert tfl.heavy_ops_int8() and tfl.num_classes == 3
    assert (tfl.predict_proba_batch(X).argmax(1) == y).mean() > 0.85


def test_write_atomic_replaces_whole_files(tmp_path):
    target = tmp_path / "sub" / "model.tflite"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["model.tflite"]


def stream_mlp(tmp_path, name: str, rows: int, hp: Hyperparameters):
    """River's stream ``name``, its first ``rows`` as an npz dataset, and the tabular MLP
    trained on them as a trainer would."""
    from cloud.data.datasets import load_dataset
    from cloud.learning.contract import DataInfo, build_model
    from cloud.learning.training import train
    from cloud.replay.streams import load_stream

    stream = load_stream(f"river:{name}", None, seed=0, quick=False)
    path = tmp_path / f"{name}.npz"
    np.savez(path, X=stream.X[:rows], y=stream.y[:rows], labels=np.array(stream.labels))
    data = load_dataset(f"npz:{path}", None, "classification")
    model = build_model("mlp", DataInfo.of(data), seed=0)
    return stream, data, train(model, data.X, data.y, hp).model


def test_a_small_classifier_the_smoothed_ranges_break_is_calibrated_with_min_max(tmp_path):
    """River's Bananas (two features): the quantizer's "smoothed" ranges clip the few
    activations that decide most answers; the export falls back to min_max ranges
    instead of refusing the model."""
    from cloud.export.exporter import agreement, quantize_static_int8
    from shared.runtime import TFLiteModel

    _, data, model = stream_mlp(tmp_path, "bananas", 500, Hyperparameters(30, 32, 1e-2, 0))
    want = predict(model, data.X)

    smoothed = quantize_static_int8(
        to_float_tflite(model, model.input_spec), data.X[:200], ranges="smoothed"
    )
    assert agreement(model.task, TFLiteModel(smoothed).predict_proba_batch(data.X), want) < 0.9

    exported = export_int8(model, data.X[:200], data.X[200:264])
    assert exported.agreement >= 0.95
    served = TFLiteModel(exported.content).predict_proba_batch(data.X)
    assert agreement(model.task, served, want) >= 0.95


def test_a_classifier_gets_the_calibration_that_agrees_best(tmp_path):
    """River's SEA (three features, a linear concept): the smoothed ranges pass the
    agreement check yet move a few percent of the answers; the export also tries
    min_max and keeps the file that agrees better with the torch model."""
    from cloud.export.exporter import agreement, quantize_static_int8
    from shared.runtime import TFLiteModel

    stream, data, model = stream_mlp(tmp_path, "sea", 480, Hyperparameters(25, 64, 3e-3, 0))
    later = stream.X[480:2480]
    want = predict(model, later)
    float_bytes = to_float_tflite(model, model.input_spec)
    agreements = {
        ranges: agreement(
            model.task,
            TFLiteModel(
                quantize_static_int8(float_bytes, data.X[:200], ranges=ranges)
            ).predict_proba_batch(later),
            want,
        )
        for ranges in ("smoothed", "min_max")
    }
    assert agreements["smoothed"] < agreements["min_max"] - 0.01

    exported = export_int8(model, data.X[:200], data.X[200:264])
    served = TFLiteModel(exported.content).predict_proba_batch(later)
    assert agreement(model.task, served, want) == pytest.approx(agreements["min_max"])
