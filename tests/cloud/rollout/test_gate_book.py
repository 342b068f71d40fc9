"""A running stage's gate figures (cloud/rollout/gate_book.py) against a real redis-server:
kept from the reports since the last step, equal to what each ring device's counters since
it switched add up to, rebuilt from the device keys when the stream lost reports or the
stage has no book, and a step reads no device key when nothing was rebuilt."""

from __future__ import annotations

import random

import pytest
import redis

from shared.messages import EdgeCounters
from shared.rollouts import DeviceSample, GatePolicy, RolloutSpec, StageSpec
from tests.cloud.rollout.test_rollout_controller import DEVICES, MODEL, Fleet

#: No decision in these tests: the figures are what is looked at.
NEVER = GatePolicy(min_labeled=10**9, min_requests=1, min_dwell_s=10**6, stage_timeout_s=10**7)
ALL = [StageSpec(name="all", percent=100)]


@pytest.fixture
def fleet(redis_client: redis.Redis) -> Fleet:
    return Fleet(redis_client)


def commands(client: redis.Redis, name: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


def expected(fleet: Fleet, at_switch: dict[str, EdgeCounters]) -> dict[str, int]:
    """Each device on B's counters since it switched, summed."""
    out = {"predictions_b": 0, "labeled_b": 0, "devices_on_b": len(at_switch)}
    for d, then in at_switch.items():
        out["predictions_b"] += fleet.counters[d].predictions - then.predictions
        out["labeled_b"] += fleet.counters[d].labeled - then.labeled
    return out


def figures(fleet: Fleet, rollout_id: str) -> dict[str, int]:
    gate = fleet.controller.get(rollout_id).stages[0].gate
    return {k: gate[k] for k in ("predictions_b", "labeled_b", "devices_on_b")}


def test_the_figures_are_each_device_s_counters_since_it_switched(fleet: Fleet) -> None:
    """Devices switch to B one by one, serve, restart (counters from zero: when they fall
    below those at the switch, the device counts from zero), report several times between
    steps or not at all: after every step the sums are what the devices' counters since
    their switch add up to."""
    rng = random.Random(7)
    r = fleet.controller.create(RolloutSpec(model=MODEL, target="2", gate=NEVER, stages=ALL))
    at_switch: dict[str, EdgeCounters] = {}
    for _ in range(12):
        for d in rng.sample(DEVICES, 6):
            for _ in range(rng.randint(1, 3)):  # several reports between two steps
                if d not in at_switch and rng.random() < 0.5:
                    at_switch[d] = fleet.counters[d].model_copy()
                    fleet.report(d, fleet.b)
                elif d in at_switch and rng.random() < 0.1:  # the edge restarted
                    fleet.counters[d] = EdgeCounters()
                    fleet.report(d, fleet.b, served=3, labeled=1)
                    then, now = at_switch[d], fleet.counters[d]
                    if now.predictions < then.predictions or now.labeled < then.labeled:
                        at_switch[d] = EdgeCounters()  # seen as a restart: from zero
                else:
                    fleet.report(
                        d,
                        fleet.b if d in at_switch else fleet.a,
                        served=rng.randint(0, 9),
                        labeled=rng.randint(0, 4),
                    )
        fleet.clock.t += 10
        fleet.controller.step_one(r.id)
        assert figures(fleet, r.id) == expected(fleet, at_switch)
    assert fleet.controller.book.rebuilt == 0
    record = fleet.client.get(fleet.keys.rollout(r.id))
    assert record is not None and len(record) < 3000  # no device's counters in the record


def test_a_step_reads_the_reports_since_the_last_not_the_ring(fleet: Fleet) -> None:
    r = fleet.controller.create(RolloutSpec(model=MODEL, target="2", gate=NEVER, stages=ALL))
    for d in DEVICES:
        fleet.report(d, fleet.b, served=5, labeled=2)
    mget, xrange = commands(fleet.client, "mget"), commands(fleet.client, "xrange")
    fleet.clock.t += 10
    fleet.controller.step_one(r.id)
    assert commands(fleet.client, "mget") == mget  # no device key read
    assert commands(fleet.client, "xrange") > xrange
    assert figures(fleet, r.id)["devices_on_b"] == len(DEVICES)


def test_a_trimmed_stream_or_a_stage_without_a_book_is_rebuilt_from_the_devices(
    fleet: Fleet,
) -> None:
    r = fleet.controller.create(RolloutSpec(model=MODEL, target="2", gate=NEVER, stages=ALL))
    at_switch = {}
    for d in DEVICES[:4]:
        at_switch[d] = fleet.counters[d].model_copy()
        fleet.report(d, fleet.b)
    fleet.clock.t += 10
    fleet.controller.step_one(r.id)
    for d in DEVICES[:4]:
        fleet.report(d, fleet.b, served=7, labeled=3)
    # more reports than the stream keeps arrive before the next step
    fleet.client.xtrim(fleet.keys.status, maxlen=0)
    fleet.client.xadd(fleet.keys.status, {"data": b"{}"})
    fleet.clock.t += 10
    fleet.controller.step_one(r.id)
    assert fleet.controller.book.rebuilt == 1
    assert figures(fleet, r.id) == expected(fleet, at_switch)

    # a rollout whose running stage a controller from before books kept in its record
    fleet.client.delete(fleet.keys.gate_book(r.id))
    old = fleet.controller.get(r.id)
    old.stages[0].switched = {
        d: DeviceSample(sha256=fleet.b, predictions=c.predictions, labeled=c.labeled)
        for d, c in at_switch.items()
    }
    fleet.client.set(fleet.keys.rollout(r.id), old.to_wire())
    fleet.report(DEVICES[0], fleet.b, served=1, labeled=1)
    fleet.clock.t += 10
    stepped = fleet.controller.step_one(r.id)
    assert fleet.controller.book.rebuilt == 2
    assert figures(fleet, r.id) == expected(fleet, at_switch)
    assert stepped.stages[0].switched == {}  # the book holds them now


def test_the_book_goes_with_the_rollout(fleet: Fleet) -> None:
    r = fleet.controller.create(RolloutSpec(model=MODEL, target="2", gate=NEVER, stages=ALL))
    fleet.report(DEVICES[0], fleet.b, served=1, labeled=1, p99=3.0)
    fleet.clock.t += 10
    assert fleet.controller.step_one(r.id).stages[0].gate["p99_ms_b"] == 3.0
    assert fleet.client.exists(fleet.keys.gate_book(r.id), fleet.keys.gate_p99(r.id)) == 2
    fleet.controller.abort(r.id, by="op")
    assert fleet.client.exists(fleet.keys.gate_book(r.id), fleet.keys.gate_p99(r.id)) == 0
