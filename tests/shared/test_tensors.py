"""Tensor inputs: specs, the one input check, raw bytes, .npy bodies, feedback frames,
and the task's metric."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shared.errors import InputError
from shared.feedback_stream import frame, frames_of
from shared.messages import FeedbackEvent, ModelManifest, ProbeSet
from shared.task import TaskSpec
from shared.tensors import TensorSpec, as_batch, from_bytes, npy_bytes, read_npy, to_bytes

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3)


@given(shapes, st.sampled_from(["float32", "uint8"]), st.integers(1, 4), st.data())
def test_a_batch_round_trips_through_bytes_and_npy(shape, dtype, n, data):
    spec = TensorSpec(shape=shape, dtype=dtype)
    elements = st.integers(0, 255) if dtype == "uint8" else st.floats(-1e6, 1e6, width=32)
    x = data.draw(hnp.arrays(spec.np_dtype, (n, *shape), elements=elements))
    batch, single = as_batch(x, spec)
    assert not single and batch.dtype == spec.np_dtype and batch.shape == (n, *shape)
    for sample in batch:
        assert np.array_equal(from_bytes(to_bytes(sample), spec), sample)
        assert len(to_bytes(sample)) == spec.nbytes
    assert np.array_equal(read_npy(npy_bytes(batch)), batch)


def test_one_sample_may_be_nested_or_flat_and_says_so():
    spec = TensorSpec(shape=[2, 2])
    for x in ([[1, 2], [3, 4]], [1, 2, 3, 4]):
        batch, single = as_batch(x, spec)
        assert single and batch.tolist() == [[[1.0, 2.0], [3.0, 4.0]]]


@pytest.mark.parametrize(
    ("x", "spec", "message"),
    [
        ([1, 2, 3], TensorSpec(shape=[2, 2]), r"shape \[2, 2\] \(one sample\) or \[N, 2, 2\]"),
        ([[1, 2], [3]], TensorSpec(shape=[2, 2]), "must be numbers"),
        ([1.5, 2], TensorSpec(shape=[2], dtype="uint8"), "whole numbers 0..255"),
        ([256, 2], TensorSpec(shape=[2], dtype="uint8"), "whole numbers 0..255"),
        ([float("nan"), 1], TensorSpec(shape=[2]), "finite"),
        ([1e39, 1], TensorSpec(shape=[2]), "finite"),
        (["a", "b"], TensorSpec(shape=[2]), "numbers"),
        (np.zeros((0, 2)), TensorSpec(shape=[2]), "empty batch"),
    ],
)
def test_input_that_does_not_fit_is_refused_with_what_was_expected(x, spec, message):
    with pytest.raises(InputError, match=message):
        as_batch(x, spec)


def test_bytes_of_the_wrong_length_and_a_pickle_are_refused():
    spec = TensorSpec(shape=[3], dtype="uint8")
    with pytest.raises(InputError, match="3 bytes, got 2"):
        from_bytes(b"ab", spec)
    with pytest.raises(InputError, match=r"not a readable \.npy"):
        read_npy(npy_bytes(np.zeros(2))[:-3])
    objects = np.array([{"a": 1}], dtype=object)
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, objects, allow_pickle=True)
    with pytest.raises(InputError):
        read_npy(buf.getvalue())


@given(st.lists(st.tuples(st.binary(max_size=50), st.binary(max_size=50)), max_size=8))
def test_frames_round_trip_and_a_cut_is_refused(pairs):
    blob = b"".join(frame(j, d) for j, d in pairs)
    assert frames_of(blob) == pairs
    if blob:
        with pytest.raises(ValueError):
            frames_of(blob[:-1])


def test_an_event_carries_a_label_or_a_target_and_its_sample_layout():
    ev = FeedbackEvent(
        event_id="pi:e:1",
        device_id="pi",
        model="temp",
        x_shape=[4, 3],
        x_dtype="float32",
        target=[21.5],
    )
    assert FeedbackEvent.from_wire(ev.to_wire()) == ev
    assert ev.x is None and ev.label is None


def test_a_manifest_describes_its_input_and_task_and_old_ones_still_read():
    common = {
        "model": "m",
        "version": 1,
        "sha256": "ab" * 32,
        "size": 10,
        "runtime": "t",
        "probe": ProbeSet(inputs=[], expected=[]),
    }
    old = ModelManifest(num_features=64, labels=["a", "b"], **common)
    assert old.input_spec == TensorSpec.flat(64) and old.task_spec.labels == ["a", "b"]
    new = ModelManifest(
        num_features=96,
        input=TensorSpec(shape=[32, 3]),
        task=TaskSpec.regression(["t"]),
        **common,
    )
    assert ModelManifest.from_wire(new.to_wire()).task_spec.metric == "mae"
    with pytest.raises(ValueError, match="not the input's size"):
        ModelManifest(num_features=95, input=TensorSpec(shape=[32, 3]), labels=["a", "b"], **common)
    with pytest.raises(ValueError, match="at least two labels"):
        ModelManifest(num_features=4, labels=["a"], **common)


def test_the_task_decides_the_metric_and_its_direction():
    clf, reg = TaskSpec.classification(["a", "b", "c"]), TaskSpec.regression(["x", "y"])
    assert clf.score([[0.1, 0.8, 0.1], [0.5, 0.2, 0.3]], [1, 2]) == 0.5
    assert reg.score([[1.0, 2.0]], [[2.0, 4.0]]) == 1.5
    assert reg.sample_scores([[1.0, 2.0], [0.0, 0.0]], [[2.0, 4.0], [0.0, 1.0]]).tolist() == [
        1.5,
        0.5,
    ]
    assert reg.better(1.0, than=2.0) and not clf.better(0.5, than=0.6)
    assert reg.gain(1.0, over=1.5) == 0.5 and clf.gain(0.9, over=0.8) == pytest.approx(0.1)
    assert np.isnan(clf.score(np.zeros((0, 3)), []))
    with pytest.raises(ValueError):
        TaskSpec(kind="regression")
