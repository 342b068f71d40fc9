"""The rollout controller against a real redis-server: rings, gates, promotion,
rollback, operator actions, pins, and restarts. Edges are represented by the
status reports they write (the controller's only input from them); the edge
side of rollouts is tested in tests/edge and end to end in the demo."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from cloud.registry.blobs import MemoryBlobStore
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.versions import Registry
from cloud.rollout.controller import RolloutConflict, RolloutController, RolloutNotFound
from cloud.rollout.rings import members, ring_order
from shared.errors import InputError
from shared.keys import FleetKeys
from shared.messages import EdgeCounters, EdgeStatus, ProbeSet
from shared.rollouts import AssignmentNotice, GatePolicy, RolloutSpec, StageSpec, desired_sha
from shared.signing import Signer, generate_keypair
from shared.status_report import add_status

MODEL = "digits"
DEVICES = [f"pi-{i:02d}" for i in range(10)]
FAST_GATE = GatePolicy(min_labeled=20, min_requests=20, min_dwell_s=5, stage_timeout_s=300)


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


class Fleet:
    """Published versions A and B, ten devices on A, and a controller."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.keys = FleetKeys("lab")
        self.registry = Registry(client, self.keys, MemoryBlobStore())
        publisher = Publisher(self.registry, Signer(generate_keypair()[0]))
        probe = ProbeSet(inputs=[[0.0]], expected=[[0.5, 0.5]])
        rng = np.random.default_rng(0)
        self.shas = []
        for _ in range(3):
            blob = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
            p = publisher.publish(PublishRequest(MODEL, blob, 1, ["a", "b"], probe, runtime="t"))
            self.shas.append(p.sha256)
        self.a, self.b, self.c = self.shas
        client.set(self.keys.target(MODEL), self.a)
        self.clock = Clock()
        self.controller = self.new_controller()
        self.counters = {d: EdgeCounters() for d in DEVICES}
        for d in DEVICES:
            self.report(d, self.a, accuracy=0.95)

    def new_controller(self) -> RolloutController:
        return RolloutController(self.client, self.keys, self.registry, clock=self.clock)

    def desired(self, device: str) -> str | None:
        def get(key: str, field: str | None = None) -> str | None:
            raw = self.client.hget(key, field) if field else self.client.get(key)
            return raw.decode() if raw else None

        return desired_sha(
            get(self.keys.target(MODEL)),
            get(self.keys.assignments(MODEL), device),
            get(self.keys.pins(MODEL), device),
        )

    def report(
        self,
        device: str,
        sha: str,
        *,
        accuracy: float = 0.95,
        served: int = 0,
        labeled: int = 0,
        correct: int | None = None,
        failed: int = 0,
        error: str | None = None,
        p99: float = 1.0,
    ) -> None:
        c = self.counters[device]
        c.predictions += served
        c.failed_requests += failed
        c.labeled += labeled
        c.labeled_correct += labeled if correct is None else correct
        status = EdgeStatus(
            device_id=device,
            fleet="lab",
            model=MODEL,
            sha256=sha,
            state="serving",
            rolling_accuracy=accuracy,
            latency_ms_p99=p99,
            counters=c,
            last_error=error,
            ts=self.clock(),
        )
        pipe = self.client.pipeline(transaction=False)  # as an edge writes its report
        add_status(pipe, self.keys, status, 3600, 10_000)
        pipe.execute()

    def edges_follow(
        self,
        *,
        correct_share: float = 0.95,
        served: int = 30,
        labeled: int = 30,
        p99_a: float = 1.0,
        p99_b: float = 1.0,
    ) -> None:
        """Every device serves what it is told and reports traffic on it."""
        for d in DEVICES:
            sha = self.desired(d)
            assert sha is not None
            correct = round(labeled * (correct_share if sha != self.a else 0.95))
            p99 = p99_a if sha == self.a else p99_b
            self.report(d, sha, served=served, labeled=labeled, correct=correct, p99=p99)

    def run(self, rollout_id: str, steps: int = 20, **follow: float) -> str:
        for _ in range(steps):
            self.edges_follow(**follow)  # type: ignore[arg-type]
            self.clock.t += 10
            r = self.controller.step_one(rollout_id)
            if r.state not in ("running",):
                return r.state
        return self.controller.get(rollout_id).state


@pytest.fixture
def fleet(redis_client: redis.Redis) -> Fleet:
    return Fleet(redis_client)


def test_rings_are_stable_cumulative_and_honour_named_devices() -> None:
    order = ring_order(DEVICES)
    assert order == ring_order(list(reversed(DEVICES)))  # input order does not matter
    rings = members(
        [
            StageSpec(name="c", percent=10),
            StageSpec(name="h", percent=50),
            StageSpec(name="all", percent=100),
        ],
        DEVICES,
    )
    assert [len(r) for r in rings] == [1, 5, 10]
    assert rings[0] == order[:1] and rings[1][:1] == rings[0]
    named = members(
        [StageSpec(name="c", devices=["pi-07", "unknown"]), StageSpec(name="all", percent=100)],
        DEVICES,
    )
    assert named[0] == ["pi-07"] and set(named[1]) == set(DEVICES)
    with pytest.raises(ValueError, match="exactly one"):
        StageSpec(name="x", percent=10, count=2)


@pytest.mark.redis_cluster
def test_a_good_version_is_promoted_through_every_ring(fleet: Fleet) -> None:
    r = fleet.controller.create(RolloutSpec(model=MODEL, target="2", gate=FAST_GATE))
    canary = r.stages[0].devices
    assert len(canary) == 1 and fleet.desired(canary[0]) == fleet.b
    assert all(fleet.desired(d) == fleet.a for d in DEVICES if d not in canary)
    assert fleet.run(r.id) == "completed"
    done = fleet.controller.get(r.id)
    assert [s.status for s in done.stages] == ["passed"] * 3
    assert all(fleet.desired(d) == fleet.b for d in DEVICES)
    assert fleet.client.hlen(fleet.keys.assignments(MODEL)) == 0  # the target carries it now
    assert fleet.controller.active(MODEL) is None


def test_a_bad_version_is_rolled_back_at_the_canary_ring(fleet: Fleet) -> None:
    r = fleet.controller.create(RolloutSpec(model=MODEL, target="2", gate=FAST_GATE))
    canary = set(r.stages[0].devices)
    ever_assigned_b: set[str] = set()
    for _ in range(10):
        fleet.edges_follow(correct_share=0.10)  # version B answers wrongly
        ever_assigned_b |= {d for d in DEVICES if fleet.desired(d) == fleet.b}
        fleet.clock.t += 10
        if fleet.controller.step_one(r.id).state != "running":
            break
    r = fleet.controller.get(r.id)
    assert r.state == "rolled_back" and "accuracy" in r.reason
    assert ever_assigned_b == canary  # the others never received it
    assert all(fleet.desired(d) == fleet.a for d in DEVICES)
    assert r.stages[0].status == "failed" and r.stages[1].status == "pending"


@pytest.mark.parametrize(
    ("p99_a", "p99_b", "state"),
    [(0.19, 0.44, "completed"), (1.0, 4.9, "completed"), (1.0, 30.0, "rolled_back")],
)
def test_p99_fails_a_stage_only_above_the_floor(
    fleet: Fleet, p99_a: float, p99_b: float, state: str
) -> None:
    """More than max_p99_ratio x A's p99 fails a stage, unless B's p99 is under
    p99_floor_ms (5 ms): sub-millisecond p99s double on a context switch."""
    fleet.edges_follow(p99_a=p99_a, p99_b=p99_a)  # A's figures, before the rollout
    r = fleet.controller.create(RolloutSpec(model=MODEL, target="2", gate=FAST_GATE))
    assert fleet.run(r.id, p99_a=p99_a, p99_b=p99_b) == state
    if state == "rolled_back":
        assert "p99" in fleet.controller.get(r.id).reason


def test_no_decision_before_enough_labeled_predictions(fleet: Fleet) -> None:
    r = fleet.controller.create(
        RolloutSpec(model=MODEL, target="2", gate=GatePolicy(min_labeled=500, min_dwell_s=0))
    )
    assert fleet.run(r.id, steps=5, correct_share=0.0, labeled=10) == "running"
    gate = fleet.controller.get(r.id).stages[0].gate
    assert gate["decision"] == "wait" and any("labeled" in why for why in gate["reasons"])


def test_a_device_that_leaves_version_b_fails_the_stage(fleet: Fleet) -> None:
    r = fleet.controller.create(RolloutSpec(model=MODEL, target="2", gate=FAST_GATE))
    canary = r.stages[0].devices[0]
    fleet.edges_follow()
    fleet.controller.step_one(r.id)
    fleet.report(canary, fleet.a, error="self-reverted: accuracy fell from 0.95 to 0.10")
    r = fleet.controller.step_one(r.id)
    assert r.state == "rolled_back" and "self-reverted" in r.reason


@pytest.mark.redis_cluster
def test_the_controller_restarted_mid_rollout_resumes_it(fleet: Fleet) -> None:
    r = fleet.controller.create(RolloutSpec(model=MODEL, target="2", gate=FAST_GATE))
    for _ in range(3):
        fleet.edges_follow()
        fleet.clock.t += 10
        fleet.controller.step_one(r.id)
    mid = fleet.controller.get(r.id)
    assert mid.state == "running" and mid.current >= 1
    fleet.controller = fleet.new_controller()  # a new process: nothing but Redis
    fleet.controller.step()
    assert fleet.run(r.id) == "completed"


def test_operator_actions(fleet: Fleet) -> None:
    c = fleet.controller
    r = c.create(RolloutSpec(model=MODEL, target="2", gate=FAST_GATE, auto_promote=False))
    with pytest.raises(RolloutConflict, match="in progress"):
        c.create(RolloutSpec(model=MODEL, target="3"))
    assert fleet.run(r.id) == "waiting"  # passed the canary, waits for a person
    c.pause(r.id, "alice")
    assert c.step_one(r.id).state == "paused"  # the controller leaves it alone
    c.resume(r.id, "alice")
    with pytest.raises(RolloutConflict, match=r"cannot resume .*: it is running"):
        c.resume(r.id, "alice")
    r = c.promote(r.id, "alice")  # the canary passed; a person moves it on
    assert r.state == "running" and r.current == 1 and r.stages[0].status == "passed"
    r = c.abort(r.id, "alice")
    assert r.state == "aborted" and all(fleet.desired(d) == fleet.a for d in DEVICES)
    assert [e.by for e in r.events if e.by == "alice"]
    with pytest.raises(RolloutConflict):
        c.promote(r.id, "alice")
    with pytest.raises(RolloutNotFound):
        c.pause("nope", "alice")


def test_rolling_back_a_completed_rollout_moves_the_target_back(fleet: Fleet) -> None:
    r = fleet.controller.create(RolloutSpec(model=MODEL, target="2", gate=FAST_GATE))
    assert fleet.run(r.id) == "completed"
    fleet.controller.rollback(r.id, "bob")
    assert all(fleet.desired(d) == fleet.a for d in DEVICES)


def test_pinned_devices_are_left_alone(fleet: Fleet) -> None:
    c = fleet.controller
    c.pin(MODEL, "pi-03", "3", "carol")
    r = c.create(RolloutSpec(model=MODEL, target="2", gate=FAST_GATE))
    assert all("pi-03" not in s.devices for s in r.stages)
    assert fleet.run(r.id) == "completed"
    assert fleet.desired("pi-03") == fleet.c
    assert c.unpin(MODEL, "pi-03", "carol") and fleet.desired("pi-03") == fleet.b


def test_edges_are_notified_and_bad_requests_are_refused(fleet: Fleet) -> None:
    r = fleet.controller.create(RolloutSpec(model=MODEL, target="2", gate=FAST_GATE))
    notices = [
        AssignmentNotice.from_wire(f[b"assign"])
        for _, f in fleet.client.xrange(fleet.keys.deltas)
        if b"assign" in f
    ]
    assert notices and notices[-1].devices == r.stages[0].devices
    assert notices[-1].concerns(MODEL, r.stages[0].devices[0])
    assert not notices[-1].concerns(MODEL, "somebody-else")
    fleet.controller.abort(r.id, "x")
    with pytest.raises(RolloutConflict, match="already the fleet's target"):
        fleet.controller.create(RolloutSpec(model=MODEL, target="1"))
    with pytest.raises(InputError, match="no device"):
        fleet.controller.create(RolloutSpec(model=MODEL, target="2", devices=["ghost"]))


def test_a_stage_waits_for_evidence_from_min_devices(fleet: Fleet) -> None:
    """One device's reports never promote a version: a two-device canary with only one
    device reporting on B waits, however good that device says B is."""
    spec = RolloutSpec(
        model=MODEL,
        target="2",
        gate=FAST_GATE,
        stages=[StageSpec(name="canary", count=2), StageSpec(name="all", percent=100)],
    )
    r = fleet.controller.create(spec)
    quiet, loud = r.stages[0].devices
    fleet.report(quiet, fleet.b)  # switched, but no traffic on B
    for _ in range(6):
        fleet.report(loud, fleet.b, served=30, labeled=30)
        fleet.clock.t += 10
        r = fleet.controller.step_one(r.id)
    gate = r.stages[0].gate
    assert r.state == "running" and r.current == 0 and gate["decision"] == "wait"
    assert "evidence from 1 of 2 devices on B" in gate["reasons"]
    assert gate["devices_with_evidence"] == 1
    fleet.report(quiet, fleet.b, served=30, labeled=30)
    fleet.clock.t += 10
    r = fleet.controller.step_one(r.id)
    assert r.current == 1 and r.stages[0].status == "passed"
