"""The whole loop, as a user runs it: ``edgeloop demo --quick --json``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.cloud]


# the drift phase waits up to 100 s more for a fleet that has not settled (a busy machine)
@pytest.mark.timeout(600)
def test_quick_demo_recovers_from_drift_and_loses_nothing(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cloud.cli.main", "demo", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=580,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    assert result["edges"] == 3
    assert result["feedback_lost"] == 0
    assert result["failed_requests"] == 0
    assert result["feedback_sent"] > 0
    assert result["versions_published"] >= 2
    # every edge ends on a version published after the drift
    pre_drift = set(result["pre_drift_versions"])
    assert pre_drift, result
    for device, version in result["edge_versions"].items():
        assert version is not None and version not in pre_drift and version > min(pre_drift), (
            device,
            result,
        )
    assert result["acc_drift_before_update"] < 0.7 * result["acc_pre_drift"]
    assert result["acc_after_update"] >= 0.9 * result["acc_pre_drift"]
    # the task-generic figures carry the same numbers, and the run reports itself done
    assert (result["task"], result["metric"], result["lower_is_better"]) == (
        "classification",
        "accuracy",
        False,
    )
    assert result["metric_after_update"] == result["acc_after_update"]
    assert result["done"] is True, result["done_criteria"]
    # edges fetch their first version whole, every later one as a patch
    assert result["full_downloads"] == result["edges"] and result["patch_failures"] == 0
    assert result["patches_applied"] >= result["edges"]


@pytest.mark.timeout(500)
def test_bad_canary_scenario_stops_a_harmful_version_at_the_canary_ring(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloud.cli.main",
            "demo",
            "--scenario",
            "bad-canary",
            "--quick",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=480,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    assert result["edges"] >= 10
    assert result["good_rollout_state"] == "completed"
    assert result["rollout_state"] == "rolled_back"
    canaries = set(result["canary_devices"])
    assert canaries and len(canaries) < result["edges"]
    # only canaries ever answered with the harmful version, and every device is back on the good one
    assert set(result["devices_that_served_bad_version"]) <= canaries
    assert set(result["fleet_versions"].values()) == {result["good_version"]}
    assert result["failed_requests"] == 0
