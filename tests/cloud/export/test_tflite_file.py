"""Reading and rewriting a real exported int8 file (cloud/export/tflite_file.py):
its layers, where their bytes are, their scales; writes in place that keep every
offset, and writes that do not fit refused."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cloud.export.tflite_file import TFLiteFile, TFLiteFileError
from shared.runtime import TFLiteModel
from shared.tflite import HEAVY_OPS


@pytest.fixture(scope="module")
def parent(exported) -> TFLiteFile:
    return TFLiteFile.read(exported.content)


def steps_off(layer, content, torch_weight: np.ndarray) -> float:
    """How far (in quantization steps) the file's dequantized weights are from the
    torch weights, in the axis order that matches best (the converter transposes)."""
    deq = layer.weight.dequantize(content)
    scales = layer.weight.channel_scales()
    errors = [
        float(np.max(np.abs(deq - np.transpose(torch_weight, perm)) / scales))
        for perm in itertools.permutations(range(torch_weight.ndim))
        if np.transpose(torch_weight, perm).shape == deq.shape
    ]
    return min(errors, default=np.inf)


def test_the_layers_are_the_models_modules_in_graph_order(parent):
    assert [layer.name for layer in parent.layers] == ["c1", "c2", "f1", "f2"]
    for layer in parent.layers:
        assert layer.op in HEAVY_OPS
        assert layer.weight.dtype == np.int8 and layer.bias is not None
        assert layer.bias.dtype == np.int32
        # per-channel scales, one per output channel, symmetric (zero points 0)
        channels = layer.weight.shape[layer.weight.axis]
        assert layer.weight.scales.shape == (channels,) == layer.bias.shape
        assert not np.any(layer.weight.zero_points)


def test_offsets_and_scales_give_back_the_trained_weights(parent, trained):
    params = dict(trained.model.named_parameters())
    for layer in parent.layers:
        torch_weight = params[f"net.{layer.name}.weight"].detach().numpy()
        assert steps_off(layer, parent.content, torch_weight) <= 0.5 + 1e-3, layer.name
        bias = params[f"net.{layer.name}.bias"].detach().numpy()
        np.testing.assert_allclose(
            layer.bias.dequantize(parent.content), bias, atol=float(layer.bias.scales.max())
        )
        # TFLite's rule for int32 biases: bias scale = input scale x weight scale
        np.testing.assert_allclose(
            layer.bias.scales, layer.input.scales * layer.weight.scales, rtol=1e-5
        )


def test_constant_data_lies_inside_the_file_and_never_overlaps(parent):
    spans = sorted((t.offset, t.offset + t.nbytes) for t in parent.constants())
    assert spans and spans[0][0] > 0 and spans[-1][1] <= len(parent.content)
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))
    for t in parent.constants():
        assert t.nbytes == t.size * t.dtype.itemsize


def test_with_values_round_trips_and_changes_only_that_tensors_bytes(parent):
    weight = parent.layers[2].weight  # f1
    new = np.clip(-parent.values(weight.name).astype(np.int64), -127, 127)
    content = parent.with_values({weight.name: new})
    assert len(content) == len(parent.content)
    back = TFLiteFile.read(content)
    assert np.array_equal(back.values(weight.name), new)
    assert np.array_equal(back.tensors[weight.name].scales, weight.scales)
    differ = np.flatnonzero(
        np.frombuffer(content, np.uint8) != np.frombuffer(parent.content, np.uint8)
    )
    assert differ.size > 0
    assert differ.min() >= weight.offset and differ.max() < weight.offset + weight.nbytes
    # still a model the edge runtime loads and runs
    assert TFLiteModel(content).predict_proba_batch(np.zeros((1, 64), np.float32)).shape == (1, 10)


def test_with_quantization_rewrites_scales_in_place(parent):
    weight = parent.layers[1].weight  # c2
    content = parent.with_quantization({weight.name: (weight.scales * 2, weight.zero_points)})
    assert len(content) == len(parent.content)
    back = TFLiteFile.read(content)
    np.testing.assert_array_equal(back.tensors[weight.name].scales, weight.scales * 2)
    np.testing.assert_array_equal(back.values(weight.name), parent.values(weight.name))


def test_a_write_that_does_not_fit_is_refused(parent):
    weight, bias = parent.layers[0].weight, parent.layers[0].bias
    with pytest.raises(TFLiteFileError, match="do not fit this tensor"):
        parent.with_values({weight.name: np.zeros(weight.size - 1, np.int8)})
    with pytest.raises(TFLiteFileError, match="do not fit this tensor"):
        parent.with_values({bias.name: np.zeros(bias.size + 1, np.int32)})
    with pytest.raises(TFLiteFileError, match="do not fit int8"):
        parent.with_values({weight.name: np.full(weight.size, 0.5)})  # floats into int8
    with pytest.raises(TFLiteFileError, match="do not fit int8"):
        parent.with_values({weight.name: np.full(weight.size, -129)})
    with pytest.raises(TFLiteFileError, match="scales do not fit"):
        parent.with_quantization({weight.name: (weight.scales[:-1], weight.zero_points[:-1])})
    activation = parent.layers[0].input  # no constant data to write into
    with pytest.raises(TFLiteFileError):
        parent.with_values({activation.name: np.zeros(activation.size, np.int8)})


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"\0\0\0\0TFL3" + b"\xff" * 8])
def test_bytes_that_are_not_a_model_are_refused(content):
    with pytest.raises(TFLiteFileError):
        TFLiteFile.read(content)
