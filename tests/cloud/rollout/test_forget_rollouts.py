"""Old finished rollouts' records are forgotten; the newest and those in progress stay."""

from __future__ import annotations

from cloud.rollout.controller import RolloutController
from shared.rollouts import Rollout


def store(client, keys, rid: str, state: str, at: float) -> None:
    r = Rollout(
        id=rid,
        fleet=keys.fleet,
        model="digits",
        from_version=1,
        from_sha256="a" * 64,
        to_version=2,
        to_sha256="b" * 64,
        state=state,
        stages=[],
        created_at=at,
    )
    client.set(keys.rollout(rid), r.to_wire())
    client.zadd(keys.rollouts, {rid: at})


def test_old_finished_rollouts_are_forgotten(redis_client, keys):
    states = ["completed", "running", "aborted", "rolled_back", "paused", "completed"]
    for i, state in enumerate(states):
        store(redis_client, keys, f"r{i}", state, 1000.0 + i)
    redis_client.zadd(keys.rollouts, {"r-broken": 999.0})
    redis_client.set(keys.rollout("r-broken"), b"{not json")
    controller = RolloutController(redis_client, keys, versions=None)  # type: ignore[arg-type]
    assert controller.forget_finished(keep=2) == 3  # r0, r2, r3: finished and not the 2 newest
    left = sorted(m.decode() for m in redis_client.zrange(keys.rollouts, 0, -1))
    assert left == ["r-broken", "r1", "r4", "r5"]  # in progress, unreadable, or among the newest
    assert not redis_client.exists(keys.rollout("r0"), keys.rollout("r2"), keys.rollout("r3"))
    assert controller.forget_finished(keep=2) == 0
