"""Datasets: digits split, CSV loading and its errors, drift transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud.data.datasets import DatasetError, drift, load_dataset, split
from cloud.learning.models import predict


def test_digits_split_is_deterministic_disjoint_and_stratified(digits):
    a, b = split(digits, seed=3), split(digits, seed=3)
    assert np.array_equal(a.stream.X, b.stream.X) and np.array_equal(a.seed_train.y, b.seed_train.y)
    c = split(digits, seed=4)
    assert not np.array_equal(a.seed_train.y, c.seed_train.y)
    total = len(a.seed_train.y) + len(a.seed_holdout.y) + len(a.stream.y)
    assert total == len(digits.y)
    rows = {r.tobytes() for r in a.seed_train.X} | {r.tobytes() for r in a.seed_holdout.X}
    assert (
        len(rows & {r.tobytes() for r in a.stream.X}) <= 5
    )  # digits has a few exact duplicate images
    assert set(np.unique(a.seed_holdout.y)) == set(range(10))
    assert a.stream.labels == digits.labels


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_loads_numeric_features_and_sorted_labels(tmp_path):
    p = write_csv(tmp_path / "w.csv", "a,b,kind\n1,2,10\n3,4,9\n5,6.5,10\n7,8,2\n")
    ds = load_dataset(f"csv:{p}", label_column="kind")
    assert ds.kind == "tabular" and ds.num_features == 2
    assert ds.labels == ["2", "9", "10"]  # numeric order, not string order
    assert ds.y.tolist() == [2, 1, 2, 0]
    assert ds.X.dtype == np.float32 and ds.X[2].tolist() == [5.0, 6.5]


def test_csv_label_defaults_to_last_column(tmp_path):
    p = write_csv(tmp_path / "w.csv", "label,x,y\n1,0.5,cat\n2,0.1,dog\n")
    ds = load_dataset(f"csv:{p}")
    assert ds.labels == ["cat", "dog"] and ds.num_features == 2


@pytest.mark.parametrize(
    ("text", "label", "message"),
    [
        ("a,b\n1,x\n2,y\n", "missing", "no column 'missing'"),
        ("a,b,c\n1,oops,0\n2,3,1\n", "c", "column 'b' is not numeric"),
        ("a,b\n1,0\n2,0\n", "b", "at least two distinct"),
        ("a,b\n", "b", "at least one data row"),
        ("a,b\n1\n", "b", "1 fields, the header has 2"),
        ("a,b\nnan,0\n1,1\n", "b", "finite"),
    ],
)
def test_csv_errors_are_clear(tmp_path, text, label, message):
    p = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(DatasetError, match=message):
        load_dataset(f"csv:{p}", label_column=label)


def test_unknown_spec_and_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="digits"):
        load_dataset("mnist")
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(f"csv:{tmp_path / 'nope.csv'}")


def test_digits_drift_breaks_a_trained_model(trained, parts):
    X, y = parts.stream.X, parts.stream.y
    before = (predict(trained.model, X).argmax(1) == y).mean()
    after = (predict(trained.model, drift("digits")(X)).argmax(1) == y).mean()
    assert before > 0.9 and after < 0.5


def test_tabular_drift_keeps_ranges_and_changes_every_column():
    rng = np.random.default_rng(0)
    X = rng.normal([0, 10, 100], [1, 2, 30], size=(500, 3)).astype(np.float32)
    D = drift("tabular")(X)
    assert D.shape == X.shape and D.dtype == np.float32
    assert np.allclose(D.mean(0), X.mean(0), atol=1e-2 * np.abs(X.mean(0)) + 1e-3)
    assert np.allclose(D.std(0), X.std(0), rtol=1e-3)
    for j in range(3):
        assert abs(np.corrcoef(D[:, j], X[:, j])[0, 1]) < 0.2
