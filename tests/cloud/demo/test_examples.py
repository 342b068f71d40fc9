"""The shipped examples: each generates its own data, deterministic in its seed, with a
drift concept of the same shape; each model passes the contract and the all-int8
export check the demo runs before starting anything."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.demo.workload import EXAMPLES, WorkloadRequest, example_files, load_make, prepare

pytestmark = pytest.mark.cloud


@pytest.mark.parametrize("name", EXAMPLES)
def test_an_example_generates_deterministic_data_with_a_drift(name):
    make = load_make(example_files(name)[0])
    a, b = make(seed=3, n=120, n_drift=80), make(seed=3, n=120, n_drift=80)
    assert np.array_equal(a["X"], b["X"]) and np.array_equal(a["y_drift"], b["y_drift"])
    assert a["X"].shape[0] == 120 and a["X_drift"].shape == (80, *a["X"].shape[1:])
    assert np.all(np.isfinite(a["X"].astype(np.float64)))
    # the drifted regime looks different where a model looks: the samples' distribution
    assert not np.allclose(a["X"].mean(0), a["X_drift"].mean(0), atol=0.05) or not np.allclose(
        a["X"].std(0), a["X_drift"].std(0), atol=0.05
    )
    if "labels" in a:  # every class shows up on both sides of the drift
        assert (
            set(np.unique(a["y"])) == set(np.unique(a["y_drift"])) == set(range(len(a["labels"])))
        )


@pytest.mark.parametrize("name", EXAMPLES)
def test_an_example_is_checked_and_named_after_itself(name, tmp_path):
    w = prepare(WorkloadRequest(example=name, quick=True), tmp_path)
    assert w.name == name
    assert w.dataset_spec == f"npz:{tmp_path / name}.npz"
    assert w.model.endswith(f"examples/{name}/model.py:build")
    assert w.has_own_drift
    assert w.dataset.task.kind == ("regression" if name == "regression" else "classification")
