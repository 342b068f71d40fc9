"""Quick demos end to end, as a user runs them: the shipped examples, and a
classification and a regression, each with a model file and an ``.npz`` dataset the
repository does not hold (written to tmp_path: the stand-in for a user's own)."""

from __future__ import annotations

import json
import subprocess
import sys
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


def run_demo(cwd: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "cloud.cli.main", "demo", "--quick", "--json", *args],
        capture_output=True,
        text=True,
        timeout=560,
        cwd=cwd,
        env=None,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = proc.stdout.strip().splitlines()[-1]
    print(line)  # the run's figures, for -rP and for a failure's report
    result: dict[str, Any] = json.loads(line)
    return result


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


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("task", "source", "arrays", "data"),
    [
        ("classification", CONV_PY, classification_arrays, "gestures"),
        ("regression", MODEL_PY, regression_arrays, "windows"),
    ],
)
def test_a_users_model_file_and_npz_recover_from_the_drift(tmp_path, task, source, arrays, data):
    """A 1-D CNN over wrist-band windows (classes) and an MLP over flow-meter windows
    (a throughput): written as a user would, nothing imported from the repository."""
    model = write_model(tmp_path, source, f"my_{task}.py")
    npz = write_npz(tmp_path, f"{data}.npz", **arrays())
    result = run_demo(tmp_path, "--model", f"{model}:build", "--dataset", f"npz:{npz}")
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
