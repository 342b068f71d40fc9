"""``edgeloop demo --scenario attacks --quick --json``: every attack of the threat model
against one live fleet (a redis-server, the trainer, the rollout controller and
enrolled edges trusting the fleet's TUF root), as a user runs it."""

from __future__ import annotations

import pytest

from cloud.demo.attacks import ATTACKS

pytestmark = [pytest.mark.slow, pytest.mark.cloud]


# The demos run two at a time (tests/demo_runs.py): a test may wait for two runs.
@pytest.mark.timeout(1500)
@pytest.mark.demo_run("attacks", lambda cwd: ["--scenario", "attacks"])
def test_every_attack_is_stopped_and_nothing_is_served_or_lost(demo_result):
    result = demo_result

    assert result["scenario"] == "attacks"
    attacks = result["attacks"]
    assert len(attacks) == len(ATTACKS)
    not_stopped = [a for a in attacks if not a["stopped"]]
    assert not not_stopped, not_stopped
    assert result["stopped"] == len(attacks) and result["all_stopped"] is True
    assert result["served_unauthorized"] == 0, result["violations"]
    assert result["feedback_lost"] == 0
    # the normal loop ran through the attacks: predictions answered, labels trained on
    assert result["predictions"] > 0 and result["failed_requests"] == 0
    assert result["feedback_trained"] > 0
    assert set(result["fleet_versions"].values()) == {result["authorized_version"]}
