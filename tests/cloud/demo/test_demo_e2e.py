"""Quick demos end to end, as a user runs them: the shipped examples, and a
classification and a regression, each with a model file and an ``.npz`` dataset the
repository does not hold (written to the run's own folder: the stand-in for a user's own)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cloud.demo.user_workload import (
    CONV_PY,
    GESTURES,
    MODEL_PY,
    classification_arrays,
    regression_arrays,
    write_model,
    write_npz,
)
from tests.demo_runs import run_demo

pytestmark = [pytest.mark.slow, pytest.mark.cloud]

ROOT = Path(__file__).resolve().parents[3]
FIELDS = (
    "task",
    "metric",
    "metric_pre_drift",
    "metric_drift_before_update",
    "metric_after_update",
    "lower_is_better",
)


def assert_done(result: dict[str, Any]) -> None:
    assert all(k in result for k in FIELDS), result
    assert result["feedback_lost"] == 0 and result["failed_requests"] == 0, result
    assert result["feedback_sent"] > 0
    pre_drift = set(result["pre_drift_versions"])
    assert pre_drift, result
    for device, version in result["edge_versions"].items():
        assert version is not None and version not in pre_drift, (device, result)
    assert result["done_criteria"]["metric_recovered_within_10pct"], result
    assert result["done"] is True, result


@pytest.mark.example
@pytest.mark.timeout(600)
def test_the_vibration_example_recovers_from_its_drift(tmp_path):
    result = run_demo(tmp_path, "--example", "vibration")
    assert result["model"] == "vibration" and result["task"] == "classification"
    assert result["metric"] == "accuracy" and result["lower_is_better"] is False
    assert result["acc_pre_drift"] == result["metric_pre_drift"]
    # the drift hurts the version trained before it
    assert result["metric_drift_before_update"] < 0.85 * result["metric_pre_drift"], result
    assert_done(result)


def user_run(task: str, source: str, arrays: Callable[[], dict[str, Any]], data: str) -> Any:
    """The demo run of a user's model file and ``.npz``, written into the run's folder."""

    def prepare(cwd: Path) -> list[str]:
        model = write_model(cwd, source, f"my_{task}.py")
        npz = write_npz(cwd, f"{data}.npz", **arrays())
        return ["--model", f"{model}:build", "--dataset", f"npz:{npz}"]

    return pytest.param(task, data, marks=pytest.mark.demo_run(f"user-{task}", prepare), id=task)


# The demos run two at a time (tests/demo_runs.py): a test may wait for two runs.
@pytest.mark.timeout(1500)
@pytest.mark.parametrize(
    ("task", "data"),
    [
        user_run("classification", CONV_PY, classification_arrays, "gestures"),
        user_run("regression", MODEL_PY, regression_arrays, "windows"),
    ],
)
def test_a_users_model_file_and_npz_recover_from_the_drift(demo_result, task, data):
    """A 1-D CNN over wrist-band windows (classes) and an MLP over flow-meter windows
    (a throughput): written as a user would, nothing imported from the repository."""
    result = demo_result
    assert result["model"] == f"my_{task}" and result["dataset"] == data
    assert result["task"] == task
    pre, hurt = result["metric_pre_drift"], result["metric_drift_before_update"]
    if task == "classification":
        assert result["metric"] == "accuracy" and result["lower_is_better"] is False
        # today's fields stay for a classifier
        assert result["acc_after_update"] == result["metric_after_update"]
        assert pre > 2 / len(GESTURES)  # well above chance before the drift
        assert hurt < 0.85 * pre, result  # the drift hurts the version trained before it
    else:
        assert result["metric"] == "mae" and result["lower_is_better"] is True
        assert not any(k.startswith("acc_") for k in result)
        assert hurt > 1.3 * pre, result  # the error of the version trained before it grows
    assert_done(result)


@pytest.mark.example
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("name", "task"), [("regression", "regression"), ("images", "classification")]
)
def test_every_other_example_recovers_from_its_drift(tmp_path, name, task):
    result = run_demo(tmp_path, "--example", name)
    assert result["model"] == name and result["task"] == task
    pre, hurt = result["metric_pre_drift"], result["metric_drift_before_update"]
    # the drift hurts the version trained before it
    assert (hurt > 1.3 * pre) if result["lower_is_better"] else (hurt < 0.85 * pre), result
    assert_done(result)
