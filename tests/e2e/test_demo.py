"""The whole loop, as a user runs it: ``edgeloop demo --quick --json``."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.cloud]


# The demos run two at a time (tests/demo_runs.py): a test may wait for two runs.
@pytest.mark.timeout(1500)
@pytest.mark.demo_run("digits", lambda cwd: [])
def test_quick_demo_recovers_from_drift_and_loses_nothing(demo_result):
    result = demo_result

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


@pytest.mark.timeout(1500)
@pytest.mark.demo_run("bad-canary", lambda cwd: ["--scenario", "bad-canary"])
def test_bad_canary_scenario_stops_a_harmful_version_at_the_canary_ring(demo_result):
    result = demo_result

    assert result["edges"] >= 10
    assert result["good_rollout_state"] == "completed"
    assert result["rollout_state"] == "rolled_back"
    canaries = set(result["canary_devices"])
    assert canaries and len(canaries) < result["edges"]
    # only canaries ever answered with the harmful version, and every device is back on the good one
    assert set(result["devices_that_served_bad_version"]) <= canaries
    assert set(result["fleet_versions"].values()) == {result["good_version"]}
    assert result["failed_requests"] == 0
