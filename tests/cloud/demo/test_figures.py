"""The demo's figures per task, from per-sample answers; the done criteria; the drift
switch to a dataset's own drift concept."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.data.datasets import load_dataset
from cloud.demo.apps import Samples, SensorApp, Traffic
from cloud.demo.figures import Outcome, Phase, done_criteria, phase_metrics, recovered
from cloud.demo.workload import Workload
from shared.task import TaskSpec
from tests.cloud.demo.user_workload import regression_arrays, write_npz

CLF = TaskSpec.classification(["ok", "worn", "broken"])
REG = TaskSpec.regression(["throughput"])


def timeline(scores_pre, scores_stale, scores_fresh, late_fresh):
    """Outcomes: before the drift (v1), after it on v1, then on v2 early and late."""
    phase = Phase(drift=True, drift_at=100.0, pre_drift_versions=frozenset({1}))
    outcomes = [Outcome(50.0 + i, False, 1, s, False) for i, s in enumerate(scores_pre)]
    outcomes += [Outcome(101.0 + i, True, 1, s, False) for i, s in enumerate(scores_stale)]
    outcomes += [Outcome(120.0 + i, True, 2, s, False) for i, s in enumerate(scores_fresh)]
    outcomes += [Outcome(190.0 + i, True, 2, s, False) for i, s in enumerate(late_fresh)]
    return outcomes, phase


def test_classification_figures_keep_the_accuracy_names():
    outcomes, phase = timeline([1, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 0, 1])
    f = phase_metrics(outcomes, phase, CLF)
    assert f["task"] == "classification" and f["metric"] == "accuracy"
    assert f["lower_is_better"] is False
    assert f["metric_pre_drift"] == f["acc_pre_drift"] == 0.75
    assert f["metric_drift_before_update"] == f["acc_drift_before_update"] == 0.25
    # only the settled end of the drift phase counts after the update
    assert f["metric_after_update"] == f["acc_after_update"] == 0.8


def test_regression_figures_are_mean_absolute_errors():
    outcomes, phase = timeline([0.5, 0.7], [3.0, 5.0], [9.0], [0.6, 0.8])
    f = phase_metrics(outcomes, phase, REG)
    assert f["task"] == "regression" and f["metric"] == "mae"
    assert f["lower_is_better"] is True
    assert f["metric_pre_drift"] == 0.6
    assert f["metric_drift_before_update"] == 4.0
    assert f["metric_after_update"] == 0.7
    assert not any(k.startswith("acc_") for k in f)


def test_no_answers_in_a_phase_is_none():
    outcomes, phase = timeline([1.0], [], [], [])
    f = phase_metrics(outcomes, phase, CLF)
    assert f["metric_drift_before_update"] is None and f["metric_after_update"] is None


@pytest.mark.parametrize(
    ("task", "pre", "after", "ok"),
    [
        (CLF, 0.95, 0.86, True),
        (CLF, 0.95, 0.85, False),
        (REG, 0.5, 0.55, True),
        (REG, 0.5, 0.56, False),
        (REG, 0.5, None, False),
    ],
)
def test_recovery_is_within_10_percent_in_the_metrics_direction(task, pre, after, ok):
    assert recovered(task, pre, after) is ok


def result(**overrides):
    base = {
        "feedback_lost": 0,
        "failed_requests": 0,
        "edge_versions": {"edge-1": 3, "edge-2": 3},
        "metric_pre_drift": 0.6,
        "metric_after_update": 0.62,
    }
    return base | overrides


def test_done_criteria():
    assert all(done_criteria(result(), REG, [1, 2]).values())
    c = done_criteria(result(feedback_lost=1, edge_versions={"a": 3, "b": 2}), REG, [1, 2])
    assert c["feedback_lost_is_0"] is False
    assert c["every_edge_on_a_post_drift_version"] is False
    assert c["failed_requests_is_0"] and c["metric_recovered_within_10pct"]
    c = done_criteria(result(edge_versions={"a": None}, metric_after_update=0.7), REG, [1])
    assert not c["every_edge_on_a_post_drift_version"]
    assert not c["metric_recovered_within_10pct"]


def test_the_drift_switches_to_the_datasets_own_concept(tmp_path):
    arrays = regression_arrays(n=50)
    ds = load_dataset(f"npz:{write_npz(tmp_path, **arrays)}")
    w = Workload("flow", "mlp", "npz:x", ds, None, None, "its drift")
    X, y = ds.X[:10], ds.y[:10]
    Xd, yd = w.drift_samples(X, y)
    assert np.array_equal(Xd, arrays["X_drift"]) and np.array_equal(yd.ravel(), arrays["y_drift"])
    samples = Samples(X, y, Xd, yd)
    rng = np.random.default_rng(0)
    drawn = [samples.draw(rng, drift=True) for _ in range(20)]
    assert all(any(np.array_equal(x, row) for row in Xd) for x, _ in drawn)
    assert all(
        any(np.array_equal(x, row) for row in X)
        for x, _ in (samples.draw(rng, False) for _ in range(20))
    )


def test_without_a_drift_concept_tensors_are_mirrored_in_their_dtype(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (40, 4, 4, 3)).astype(np.uint8)
    ds = load_dataset(f"npz:{write_npz(tmp_path, X=frames, y=rng.integers(0, 2, 40))}")
    w = Workload("cam", "dwcnn", "npz:x", ds, None, None, "features mirrored")
    Xd, yd = w.drift_samples(ds.X, ds.y)
    assert Xd.dtype == np.uint8 and Xd.shape == ds.X.shape
    assert np.array_equal(yd, ds.y) and not np.array_equal(Xd, ds.X)


def app(task):
    traffic = Traffic(rate_hz=1.0, label_share=1.0, noise=0.0, seed=0)
    x = np.zeros((3, 2), np.float32)
    return SensorApp("app", "http://127.0.0.1:9", Samples(x, x, x, x), Phase(), traffic, task)


def test_an_app_scores_a_class_answer_and_a_regression_answer():
    clf = app(CLF)
    assert clf.score({"label": 2, "probabilities": [0.1, 0.1, 0.8]}, np.int64(2)) == 1.0
    assert clf.score({"label": 0}, 2) == 0.0
    reg = app(REG)
    assert reg.score({"outputs": [4.5]}, np.array([5.0], np.float32)) == pytest.approx(0.5)


def test_an_answer_in_another_tasks_terms_is_a_failed_request():
    reg = app(REG)
    assert reg.score({"label": 1, "probabilities": [0.3, 0.7]}, np.array([5.0])) is None
    clf = app(CLF)
    assert clf.score({"outputs": [0.2]}, 1) is None
    assert reg.stats.failed == clf.stats.failed == 1


def test_the_old_versions_figure_after_the_drift_leaves_out_adapted_answers():
    """Once the edge's adaptation answers for the old version, its answers are not the old
    version's: the drift's harm is measured on the version's own answers."""
    outcomes, phase = timeline([1, 1, 1, 1], [0, 0], [1, 1], [1, 1])
    outcomes += [Outcome(110.0 + i, True, 1, 1.0, False, True) for i in range(6)]
    f = phase_metrics(outcomes, phase, CLF)
    assert f["acc_drift_before_update"] == 0.0
