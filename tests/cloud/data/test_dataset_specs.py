"""Dataset specs beyond digits: npz and py files with the task read from y, tensor samples,
a drift the data brings, CSV regressions, and every bad spec refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud.data.datasets import DatasetError, load_dataset, split
from shared.errors import ConfigError


def npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_integer_classes_with_names_and_uint8_images(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    y = np.arange(40) % 3
    ds = load_dataset(npz(tmp_path / "img.npz", X=X, y=y, labels=["cat", "dog", "owl"]))
    assert (ds.name, ds.kind, ds.input.describe()) == ("img", "tensor", "[8, 8, 3] uint8")
    assert ds.task.labels == ["cat", "dog", "owl"] and ds.y.dtype == np.int64
    assert ds.X.dtype == np.uint8 and np.array_equal(ds.X, X) and ds.num_features == 192
    parts = split(ds, seed=0)  # stratified by class
    assert set(parts.seed_holdout.y.tolist()) == {0, 1, 2}


def test_npz_string_labels_become_sorted_class_names(tmp_path):
    X = np.zeros((6, 4, 2), np.float64)
    y = np.array(["walk", "run", "idle", "run", "walk", "idle"])
    ds = load_dataset(npz(tmp_path / "w.npz", X=X, y=y))
    assert ds.task.labels == ["idle", "run", "walk"] and ds.y.tolist() == [2, 1, 0, 1, 2, 0]
    assert ds.input.describe() == "[4, 2] float32" and ds.X.dtype == np.float32


def test_npz_float_targets_are_a_regression_with_named_outputs(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 16, 3))
    y = rng.normal(size=(50, 2))
    ds = load_dataset(npz(tmp_path / "r.npz", X=X, y=y, outputs=["temp_c", "rul_h"]))
    assert ds.task.kind == "regression" and ds.task.outputs == ["temp_c", "rul_h"]
    assert ds.y.shape == (50, 2) and ds.y.dtype == np.float32 and ds.labels == []
    one = load_dataset(npz(tmp_path / "r1.npz", X=X, y=y[:, 0]))
    assert one.task.outputs == ["y"] and one.y.shape == (50, 1)
    parts = split(one, seed=0)  # not stratified: no classes
    assert len(parts.seed_train.y) + len(parts.seed_holdout.y) + len(parts.stream.y) == 50


def test_the_task_can_be_named_instead_of_read_from_y(tmp_path):
    X = np.zeros((6, 3))
    spec = npz(tmp_path / "t.npz", X=X, y=np.array([0, 1, 2, 0, 1, 2]))
    assert load_dataset(spec).task.kind == "classification"
    ds = load_dataset(spec, task="regression")
    assert ds.task.kind == "regression" and ds.y[:, 0].tolist() == [0, 1, 2, 0, 1, 2]
    whole = npz(tmp_path / "w.npz", X=X, y=np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0]))
    assert load_dataset(whole, task="classification").task.labels == ["0", "1"]


def test_a_drift_the_data_brings_is_checked_against_the_task(tmp_path):
    X, y = np.zeros((6, 2, 2)), np.array(["a", "b", "a", "b", "a", "b"])
    ds = load_dataset(npz(tmp_path / "d.npz", X=X, y=y, X_drift=X[:4] + 1, y_drift=y[:4]))
    assert ds.X_drift.shape == (4, 2, 2) and ds.y_drift.tolist() == [0, 1, 0, 1]
    with pytest.raises(DatasetError, match="labels \\['z'\\] that y does not have"):
        load_dataset(npz(tmp_path / "e.npz", X=X, y=y, X_drift=X[:1], y_drift=np.array(["z"])))
    with pytest.raises(DatasetError, match="X_drift samples have shape \\[4\\]"):
        load_dataset(npz(tmp_path / "s.npz", X=X, y=y, X_drift=np.zeros((2, 4)), y_drift=y[:2]))
    with pytest.raises(DatasetError, match="both X_drift and y_drift"):
        load_dataset(npz(tmp_path / "o.npz", X=X, y=y, X_drift=X))


def test_py_spec_calls_a_function_from_a_file(tmp_path):
    source = tmp_path / "gen.py"
    source.write_text(
        "import numpy as np\n"
        "def windows():\n"
        "    rng = np.random.default_rng(0)\n"
        "    return {'X': rng.normal(size=(30, 8, 3)), 'y': rng.normal(size=30),\n"
        "            'outputs': ['load']}\n"
        "def broken():\n"
        "    return [1, 2]\n"
    )
    ds = load_dataset(f"py:{source}:windows")
    assert ds.name == "windows" and ds.task.outputs == ["load"] and ds.input.shape == [8, 3]
    with pytest.raises(DatasetError, match="returned a list; expected a mapping with X and y"):
        load_dataset(f"py:{source}:broken")
    with pytest.raises(DatasetError, match="has no attribute 'nope'"):
        load_dataset(f"py:{source}:nope")
    with pytest.raises(DatasetError, match="cannot import module 'no_such_module_x'"):
        load_dataset("py:no_such_module_x:make")


def test_csv_with_fractional_labels_is_a_regression_on_that_column(tmp_path):
    p = tmp_path / "temp.csv"
    p.write_text("a,b,temp\n1,2,20.5\n3,4,21.0\n5,6,19.75\n")
    ds = load_dataset(f"csv:{p}")
    assert ds.task.kind == "regression" and ds.task.outputs == ["temp"]
    assert ds.y[:, 0].tolist() == [20.5, 21.0, 19.75]
    whole = tmp_path / "whole.csv"
    whole.write_text("a,level\n1,2\n3,4\n5,2\n")
    assert load_dataset(f"csv:{whole}").task.labels == ["2", "4"]
    assert load_dataset(f"csv:{whole}", task="regression").task.outputs == ["level"]
    with pytest.raises(DatasetError, match="task regression needs numbers in column 'kind'"):
        (tmp_path / "k.csv").write_text("a,kind\n1,cat\n2,dog\n")
        load_dataset(f"csv:{tmp_path / 'k.csv'}", task="regression")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": np.zeros(3)}, "no X; expected arrays X \\[N, \\*input_shape\\] and y"),
        ({"X": np.zeros((3, 2))}, "no y"),
        ({"X": np.zeros(3), "y": np.zeros(3)}, "X must be \\[N, \\*input_shape\\]"),
        ({"X": np.zeros((3, 2)), "y": np.zeros(4)}, "y has 4 rows, X has 3"),
        (
            {"X": np.zeros((3, 2, 2)), "y": np.zeros(3), "input_shape": [4]},
            "X samples have shape \\[2, 2\\], the declared input shape is \\[4\\]",
        ),
        (
            {"X": np.zeros((3, 2)), "y": np.array([0, 1, 5]), "labels": ["a", "b"]},
            "y holds class 5 but labels names 2 classes \\(0..1\\)",
        ),
        ({"X": np.zeros((3, 2)), "y": np.array([1, 1, 1])}, "at least two distinct"),
        (
            {"X": np.zeros((3, 2)), "y": np.zeros((3, 2)), "outputs": ["a"]},
            "outputs names 1 outputs, y has 2",
        ),
        ({"X": np.full((3, 2), np.nan), "y": np.zeros(3)}, "must be finite"),
        ({"X": np.zeros((3, 2)), "y": np.zeros(3), "extra": 1}, "unknown keys \\['extra'\\]"),
        ({"X": np.zeros((3, 1, 1, 1, 1, 1)), "y": np.zeros(3)}, "X samples of shape"),
    ],
)
def test_bad_npz_files_are_refused_naming_the_file(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    with pytest.raises(DatasetError, match=message) as e:
        load_dataset(npz(path, **arrays))
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ConfigError)  # the CLI prints one line and exits 2


def test_unreadable_and_missing_files(tmp_path):
    garbage = tmp_path / "g.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match=r"not a readable \.npz file"):
        load_dataset(f"npz:{garbage}")
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    with pytest.raises(DatasetError, match='"npz:PATH"'):
        load_dataset("parquet:x")
