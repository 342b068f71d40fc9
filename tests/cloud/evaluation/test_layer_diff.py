"""Per-layer change of two real int8 files (cloud/evaluation/layer_diff.py), read
through the edge runtime: identical files show no change, and a changed weight
or scale shows in its own layer and nowhere else."""

from __future__ import annotations

import pytest

from cloud.evaluation.layer_diff import compare_artifacts, read_layers
from cloud.export.tflite_file import TFLiteFile
from shared.errors import ModelRejected

LAYERS = ["c1", "c2", "f1", "f2"]


@pytest.fixture(scope="module")
def parent(exported) -> TFLiteFile:
    return TFLiteFile.read(exported.content)


def by_name(change):
    return {layer.name: layer for layer in change.layers}


def test_the_layers_are_read_with_their_sizes(exported, parent):
    layers = read_layers(exported.content)
    assert [layer.name for layer in layers] == LAYERS
    for layer, ours in zip(layers, parent.layers, strict=True):
        assert layer.nbytes == ours.weight.nbytes + ours.bias.nbytes
        assert layer.params == ours.weight.size + ours.bias.size


def test_identical_files_show_no_change(exported):
    change = compare_artifacts(exported.content, exported.content)
    assert change.source == "artifacts" and change.bytes_changed == 0
    assert [layer.name for layer in change.layers] == LAYERS
    for layer in change.layers:
        assert (layer.bytes_changed, layer.l2_change, layer.scales_changed) == (0, 0.0, 0)


def test_a_changed_weight_shows_in_its_layer_only(exported, parent):
    f1 = parent.layers[2].weight
    values = parent.values(f1.name)
    row, col = 5, 17
    step = 3 if values[row, col] < 100 else -3
    values[row, col] += step
    child = parent.with_values({f1.name: values})

    change = compare_artifacts(exported.content, child)

    layers = by_name(change)
    assert change.bytes_changed == layers["f1"].bytes_changed == 1
    # the L2 change is the step in that output channel's units
    assert layers["f1"].l2_change == pytest.approx(
        abs(step) * f1.scales[row], abs=1e-6
    )  # rounded to 6 places
    assert layers["f1"].scales_changed == 0
    for name in ("c1", "c2", "f2"):
        assert (layers[name].bytes_changed, layers[name].l2_change) == (0, 0.0), name


def test_changed_scales_are_counted_apart_from_the_bytes_of_the_weights(exported, parent):
    c2 = parent.layers[1].weight
    scales = c2.scales.copy()
    scales[:4] *= 1.5
    child = parent.with_quantization({c2.name: (scales, c2.zero_points)})

    layers = by_name(compare_artifacts(exported.content, child))

    assert layers["c2"].bytes_changed == 0 and layers["c2"].scales_changed == 4
    assert layers["c2"].l2_change > 0  # the same int8 values now mean other weights
    assert all(layers[n].scales_changed == 0 for n in ("c1", "f1", "f2"))


def test_without_a_parent_only_the_inventory_is_given(exported):
    change = compare_artifacts(None, exported.content)
    assert change.source == "none" and change.bytes_changed is None
    assert [layer.name for layer in change.layers] == LAYERS
    assert change.bytes == sum(layer.bytes for layer in change.layers)


def test_a_file_that_is_not_tflite_is_rejected(exported):
    with pytest.raises(ModelRejected):
        compare_artifacts(exported.content, b"TFL3" + b"\0" * 64)
