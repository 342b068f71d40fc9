"""The rollout controller's loop while the master of the fleet's slot is killed in the
middle of a step that decides a stage: the step completes after the election or fails
with one log line and a later one succeeds; no traceback, no decision applied twice.

The test starts a cluster of its own (it kills one of its masters). Run with ``-s`` for
the figures (docs/ARCHITECTURE.md, "Redis Cluster").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from cloud.rollout.loop import ControllerLoop
from shared.redis_client import connect_redis
from shared.replies import REDIS_DOWN
from shared.rollouts import AssignmentNotice, RolloutSpec
from tests.cloud.rollout.test_rollout_controller import FAST_GATE, MODEL, Fleet
from tests.redis_cluster import RedisClusterNodes
from tests.serving import wait_for


def _retried(call: Callable[[], Any], timeout: float = 15.0) -> Any:
    """The test's own writes (the edges' reports) ride through the election too."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except (redis.RedisError, *REDIS_DOWN):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_step_in_flight_during_a_failover_is_applied_once(
    own_cluster: RedisClusterNodes, caplog: pytest.LogCaptureFixture
) -> None:
    # on this logger itself: a test before may have raised the level of "cloud" above INFO
    caplog.set_level(logging.INFO, logger="cloud.rollout.loop")
    client = connect_redis(own_cluster.url)
    fleet = Fleet(client)
    rollout = fleet.controller.create(RolloutSpec(model=MODEL, target="2", gate=FAST_GATE))
    master = client.get_node_from_key(fleet.keys.rollout(rollout.id)).port  # type: ignore[attr-defined]
    controller = fleet.controller
    advance = controller.book.advance
    killed_at = 0.0

    def kill_inside_a_decision(pipe: Any, rollout: Any) -> Any:
        # Called under WATCH, before MULTI, in a step that judges a running stage (the
        # gate book's reports since the last step): the first one after the dwell has
        # passed is the one that decides it.
        nonlocal killed_at
        if not killed_at and fleet.clock.t >= 1_000_000.0 + 20:
            own_cluster.synced(master)  # what came before this step is on the replica
            own_cluster.kill(master)
            killed_at = time.monotonic()
        return advance(pipe, rollout)

    controller.book.advance = kill_inside_a_decision  # type: ignore[method-assign]
    loop = ControllerLoop(controller, 0.05)
    loop.start()
    try:
        state = "running"
        for _ in range(30):
            _retried(fleet.edges_follow)
            fleet.clock.t += 10
            steps = loop.steps
            wait_for(lambda s=steps: loop.steps > s + 1, 20, "two controller steps")
            state = _retried(lambda: controller.get(rollout.id)).state
            if state != "running":
                break

        def said(level: int, text: str = "") -> bool:
            return any(
                r.name == "cloud.rollout.loop" and r.levelno == level and text in r.getMessage()
                for r in caplog.records
            )

        # the step after a failed one says so once it has run whole (after the counts and
        # the collection, which may come after the rollout's completion is visible here)
        wait_for(
            lambda: not said(logging.WARNING) or said(logging.INFO, "reachable again"),
            20,
            "the controller's line that Redis is reachable again",
        )
    finally:
        loop.stop()
    recovered_s = time.monotonic() - killed_at
    done = controller.get(rollout.id)
    whats = [e.what for e in done.events]
    notices = [
        AssignmentNotice.from_wire(f[b"assign"])
        for _, f in client.xrange(fleet.keys.deltas)
        if b"assign" in f
    ]
    loop_records = [r for r in caplog.records if r.name == "cloud.rollout.loop"]
    warnings = [r.getMessage() for r in loop_records if r.levelno >= logging.WARNING]
    print(
        f"\nmaster {master} killed inside a step deciding a stage; the rollout "
        f"{done.state} {recovered_s:.1f} s after the kill; {loop.steps} steps, "
        f"{loop.errors} failed, controller warnings: {warnings}; events: {whats}; "
        f"{len(notices)} assignment notices"
    )
    assert killed_at, "the kill never happened"
    assert done.state == "completed"
    assert [s.status for s in done.stages] == ["passed"] * len(done.stages)
    assert len(whats) == len(set(whats))  # every decision once
    assert all(fleet.desired(d) == fleet.b for d in fleet.counters)
    assert not any(r.exc_info for r in caplog.records)  # no traceback anywhere
    assert len(warnings) <= 1  # at most one line for the outage...
    if warnings:  # ...and one when it is over
        assert any("reachable again" in r.getMessage() for r in loop_records)


class _Unreachable:
    """A controller whose steps meet a cluster no layout refresh could reach (as during
    the publish failover test), then one that answers again."""

    client = keys = None

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def step(self) -> None:
        if self.failures:
            self.failures -= 1
            raise redis.exceptions.RedisClusterUnreachableError("no reachable node")

    def renew_orders(self) -> None:
        pass


def test_an_unreachable_cluster_is_an_outage_for_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RedisClusterUnreachableError is no RedisError: the loop must still take it for an
    outage (one line, then one when it is over), not a failed step with a traceback."""
    controller = _Unreachable(failures=3)
    loop = ControllerLoop(controller, 0.01, counts=_NoCounts())  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="cloud.rollout.loop"):
        loop.start()
        try:
            wait_for(lambda: loop.steps >= 2, 5, "steps after the outage")
        finally:
            loop.stop()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert loop.errors == 3 and len(lines) == 1 and "no reachable node" in lines[0]
    assert not any(r.exc_info for r in caplog.records)
    assert any("reachable again" in r.getMessage() for r in caplog.records)


class _NoCounts:
    def catch_up(self, **_: Any) -> None:
        pass
