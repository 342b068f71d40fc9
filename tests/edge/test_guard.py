"""Self-protection: an edge reverts a version that is worse than the previous one on
its own traffic, remembers the refusal, and reports why.

The bad version is real: the digits CNN with its outputs rolled by one class
(tests/edge/data/make_permuted.py). It is signed, static int8 and passes its
probe, and answers wrongly; the good one is the bundled baseline. Labeled
feedback goes through the daemon's in-process API.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import redis
from helpers import PERMUTED_MODEL, desire, labeled_digits, publish_version, variant

from edge.daemon import EdgeDaemon
from edge.guard import Evidence, GuardPolicy, Traffic, judge
from shared.codec import sha256_hex
from shared.keys import FleetKeys
from tests.serving import Signing, wait_for

Factory = Callable[..., EdgeDaemon]

GOOD, OTHER_GOOD, BAD = variant(1), variant(2), PERMUTED_MODEL.read_bytes()
A, A2, B = (sha256_hex(m) for m in (GOOD, OTHER_GOOD, BAD))
X, Y = labeled_digits()
GUARD = {"guard_min_labeled": 40, "guard_window_s": 300, "desired_poll_s": 0.2}


def serving(daemon: EdgeDaemon) -> str | None:
    current = daemon.chain.current
    return current.sha256 if current else None


def label(daemon: EdgeDaemon, start: int, n: int) -> None:
    """Predict ``n`` digits from ``start`` and send each one's true label."""
    for i in range(start, start + n):
        p = daemon.predict(X[i])
        daemon.feedback(int(Y[i]), p.request_id)


def scored(daemon: EdgeDaemon, n: int) -> bool:
    e = daemon.guard.evidence
    return e is not None and e.labeled == n


def caught_up(daemon: EdgeDaemon, client: redis.Redis, keys: FleetKeys) -> bool:
    last = client.xrevrange(keys.deltas, count=1)[0][0].decode()
    return daemon.store.deltas_last_id == last


@pytest.fixture
def fleet(redis_client: redis.Redis, keys: FleetKeys, signing: Signing) -> redis.Redis:
    """v1 good, v2 bad, v3 good (another file); the target is v1."""
    for v, content in enumerate((GOOD, BAD, OTHER_GOOD), start=1):
        publish_version(redis_client, keys, signing.signer, content, v)
    desire(redis_client, keys, target=A)
    return redis_client


def test_an_edge_reverts_a_regression_by_itself_and_reports_why(
    daemon_factory: Factory, fleet: redis.Redis, keys: FleetKeys
) -> None:
    daemon = daemon_factory(**GUARD)
    wait_for(lambda: serving(daemon) == A, what="the good version")
    label(daemon, 0, 50)
    desire(fleet, keys, target=B)
    wait_for(lambda: daemon.guard.watching == B, what="the bad version on probation")

    label(daemon, 50, 39)  # one short of the minimum: no decision on so little
    wait_for(lambda: scored(daemon, 39), what="39 labeled predictions scored")
    assert serving(daemon) == B and daemon.guard.reverts == 0

    label(daemon, 89, 5)
    wait_for(lambda: serving(daemon) == A, what="the revert")
    health = daemon.health()
    assert health.sha256 == A and health.version == 1
    assert health.refused_sha256 == B and health.counters.self_reverts == 1
    assert health.revert_reason is not None and "accuracy" in health.revert_reason
    assert (health.last_error or "").startswith(f"self-reverted digits v2 ({B[:12]}) to digits v1")
    assert daemon.chain.last_known_good is None  # the bad version is no fallback either
    assert (daemon.store.current, daemon.store.last_known_good) == (A, None)
    assert daemon.store.refused_sha256 == B

    def reported() -> dict[str, Any] | None:
        raw = fleet.get(keys.device("pi-1"))
        status = json.loads(raw) if raw else None
        return status if status and status["sha256"] == A else None

    status = wait_for(reported, what="the revert reported")
    assert status["refused_sha256"] == B and "self-reverted" in status["last_error"]
    # The next predictions come from the good version again.
    assert daemon.predict(X[200]).label == Y[200]


def test_a_refused_version_stays_refused_while_desired_and_returns_when_desired_anew(
    daemon_factory: Factory, fleet: redis.Redis, keys: FleetKeys
) -> None:
    daemon = daemon_factory(**GUARD)
    wait_for(lambda: serving(daemon) == A, what="the good version")
    desire(fleet, keys, target=B)
    wait_for(lambda: daemon.guard.watching == B, what="the bad version on probation")
    label(daemon, 0, 60)
    wait_for(lambda: serving(daemon) == A, what="the revert")
    swaps = daemon.updater.swaps

    desire(fleet, keys, target=B)  # told again, and checked every 0.2 s
    wait_for(lambda: caught_up(daemon, fleet, keys), what="the notice read")
    time.sleep(1.0)
    assert serving(daemon) == A and daemon.updater.swaps == swaps

    # A restart keeps the refusal: it is in the state file.
    daemon.stop()
    again = daemon_factory(**GUARD)
    assert serving(again) == A and again.store.refused_sha256 == B
    wait_for(lambda: again.updater.desired == B, what="the desired version read")
    time.sleep(0.5)
    assert serving(again) == A and again.updater.swaps == 0

    # The desired version moves away (the rollout rolled back): the refusal is lifted...
    desire(fleet, keys, target=A)
    wait_for(lambda: again.store.refused_sha256 is None, what="the refusal lifted")
    assert again.health().refused_sha256 is None and serving(again) == A
    # ...and when it is desired again, it is applied again (and watched again).
    desire(fleet, keys, target=B)
    wait_for(lambda: again.guard.watching == B, what="the version applied again, on probation")


def test_the_revert_needs_no_cloud(
    daemon_factory: Factory, fleet: redis.Redis, keys: FleetKeys, redis_server: Any
) -> None:
    daemon = daemon_factory(**GUARD)
    wait_for(lambda: serving(daemon) == A, what="the good version")
    desire(fleet, keys, target=B)
    wait_for(lambda: daemon.guard.watching == B, what="the bad version on probation")
    redis_server.stop()
    label(daemon, 0, 60)  # feedback spools to disk meanwhile
    wait_for(lambda: serving(daemon) == A, what="the revert with Redis down")
    assert daemon.store.refused_sha256 == B


def test_a_good_version_is_accepted_and_a_step_back_is_not_watched(
    daemon_factory: Factory, fleet: redis.Redis, keys: FleetKeys
) -> None:
    daemon = daemon_factory(**{**GUARD, "guard_window_s": 1.0})
    wait_for(lambda: serving(daemon) == A, what="v1")
    desire(fleet, keys, target=A2)
    wait_for(lambda: serving(daemon) == A2, what="v3")
    label(daemon, 0, 100)  # as accurate as v1 on the same inputs
    wait_for(lambda: daemon.guard.watching is None, what="v3 accepted after its window")
    assert serving(daemon) == A2 and daemon.guard.reverts == 0
    desire(fleet, keys, target=A)  # a step back to the last-known-good
    wait_for(lambda: serving(daemon) == A, what="back to v1")
    assert daemon.guard.watching is None


def test_the_guard_can_be_switched_off(
    daemon_factory: Factory, fleet: redis.Redis, keys: FleetKeys
) -> None:
    daemon = daemon_factory(**GUARD, guard_enabled=False)
    wait_for(lambda: serving(daemon) == A, what="v1")
    desire(fleet, keys, target=B)
    wait_for(lambda: serving(daemon) == B, what="v2")
    label(daemon, 0, 60)
    time.sleep(0.5)
    assert serving(daemon) == B and daemon.guard.reverts == 0


# -- the rule -----------------------------------------------------------------

POLICY = GuardPolicy(min_predictions=200, min_labeled=50)


def traffic(predictions: int, fallbacks: int = 0, errors: int = 0) -> Traffic:
    return Traffic(predictions, fallbacks, errors)


@pytest.mark.parametrize(
    ("evidence", "found"),
    [
        (
            Evidence(before=traffic(1000, 10), after=traffic(300, 60)),
            "fallback rate 0.200 vs 0.010",
        ),
        (Evidence(before=traffic(1000), after=traffic(300, 9, 9)), "error rate 0.030 vs 0.000"),
        (Evidence(after=traffic(300), p99_before=2.0, p99_after=9.0), "p99 latency 9.00 ms"),
        (Evidence(labeled=50, new_correct=30, previous_correct=45), "accuracy 0.600 vs 0.900"),
    ],
    ids=["fallbacks", "errors", "p99", "accuracy"],
)
def test_each_regression_is_found(evidence: Evidence, found: str) -> None:
    (reason,) = judge(POLICY, evidence)
    assert reason.startswith(found)


@pytest.mark.parametrize(
    "evidence",
    [
        Evidence(before=traffic(1000), after=traffic(199, 199, 199)),  # too few predictions
        Evidence(labeled=49, new_correct=0, previous_correct=49),  # too few labels
        Evidence(after=traffic(300), p99_before=0.05, p99_after=4.0),  # 80x, under the floor
        Evidence(after=traffic(300), p99_before=4.0, p99_after=11.0),  # over the floor, 2.75x
        Evidence(labeled=100, new_correct=85, previous_correct=94),  # a drop within 0.10
        Evidence(before=traffic(1000, 100), after=traffic(300, 40)),  # as many fallbacks as before
    ],
)
def test_too_little_evidence_or_a_small_change_is_no_regression(evidence: Evidence) -> None:
    assert judge(POLICY, evidence) == []


def test_accuracy_is_paired_on_the_same_inputs() -> None:
    """A drifted stream that lowers both versions' accuracy is no regression of the new one."""
    both_worse = Evidence(labeled=100, new_correct=55, previous_correct=52)
    assert judge(POLICY, both_worse) == []
    assert np.isclose(both_worse.new_correct / both_worse.labeled, 0.55)
