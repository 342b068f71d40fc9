"""The rollout controller with a director key, on a real redis-server: every decision
(a stage's assignment, completion, a rollback, a pin) is a signed order; each device's
gate (edge/director.py, with its own counter file) reads the version the controller
meant and never sees a counter go back; a trainer's unsigned target write decides
nothing; the loop renews orders and restores a replayed one."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import redis

from cloud.registry.blobs import MemoryBlobStore
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.versions import Registry
from cloud.rollout.controller import RolloutController
from cloud.rollout.director import Director
from edge.director import DirectorGate
from shared.director import FLEET_SCOPE
from shared.keys import FleetKeys
from shared.messages import EdgeStatus, ProbeSet
from shared.rollouts import RolloutSpec, StageSpec
from shared.signing import Signer, Verifier, generate_keypair

MODEL = "digits"
DEVICES = ["pi-a", "pi-b", "pi-c"]


class Setup:
    def __init__(self, client: redis.Redis, keys: FleetKeys, tmp_path: Path) -> None:
        self.client, self.keys = client, keys
        registry = Registry(client, keys, MemoryBlobStore())
        publisher = Publisher(registry, Signer(generate_keypair()[0]), release="direct")
        probe = ProbeSet(inputs=[[0.0]], expected=[[0.5, 0.5]])
        rng = np.random.default_rng(0)
        self.shas = []
        for _ in range(3):
            blob = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
            req = PublishRequest(MODEL, blob, 1, ["a", "b"], probe, runtime="t")
            self.shas.append(publisher.publish(req).sha256)
        private, public = generate_keypair()
        self.director = Director(client, keys, Signer(private))
        self.controller = RolloutController(client, keys, registry, director=self.director)
        self.gates = {
            d: DirectorGate(keys, MODEL, d, [Verifier(public)], tmp_path / f"{d}.counter")
            for d in DEVICES
        }
        for d in DEVICES:
            status = EdgeStatus(device_id=d, fleet=keys.fleet, model=MODEL, state="serving")
            client.set(keys.device(d), status.to_wire())
            client.zadd(keys.devices, {d: status.ts})

    def served(self) -> dict[str, str | None]:
        """What each device's gate says it is to serve now (OrderRefused fails the test)."""
        out = {}
        for d, gate in self.gates.items():
            order = gate.read(self.client)
            out[d] = order.sha256 if order else None
        return out

    def rollout(self, sha: str) -> str:
        spec = RolloutSpec(
            model=MODEL,
            target=sha,
            stages=[StageSpec(name="canary", devices=["pi-a"]), StageSpec(name="all", percent=100)],
        )
        return self.controller.create(spec, by="op").id


@pytest.fixture
def setup(redis_client, keys, tmp_path) -> Setup:
    return Setup(redis_client, keys, tmp_path)


def test_every_decision_is_an_order_and_no_device_sees_a_counter_go_back(setup):
    a, b, c = setup.shas
    # The trainer released C directly (an unsigned target write): nobody is ordered to it.
    assert setup.client.get(setup.keys.target(MODEL)).decode() == c
    assert setup.controller.target(MODEL) is None and setup.served() == dict.fromkeys(DEVICES)

    first = setup.rollout(a)  # the first rollout of the fleet: nothing to come from
    assert setup.served() == {"pi-a": a, "pi-b": None, "pi-c": None}
    setup.controller.promote(first, "op")
    setup.controller.step()  # the next stage starts
    assert setup.served() == dict.fromkeys(DEVICES, a)
    setup.controller.promote(first, "op")  # completed: the fleet's order names A
    assert setup.controller.target(MODEL) == a
    assert set(setup.client.hkeys(setup.keys.director(MODEL))) == {FLEET_SCOPE.encode()}

    second = setup.rollout(b)
    assert setup.served() == {"pi-a": b, "pi-b": a, "pi-c": a}
    setup.controller.rollback(second, "op")  # the canary goes back by a newer order
    assert setup.served() == dict.fromkeys(DEVICES, a)

    setup.controller.pin(MODEL, "pi-c", c, "op")
    third = setup.rollout(b)
    setup.controller.promote(third, "op")
    setup.controller.step()
    setup.controller.promote(third, "op")  # completed: the fleet moves to B, the pin holds
    assert setup.served() == {"pi-a": b, "pi-b": b, "pi-c": c}
    setup.controller.rollback(third, "op")  # after completion: a new fleet order naming A
    assert setup.served() == {"pi-a": a, "pi-b": a, "pi-c": c}
    setup.controller.unpin(MODEL, "pi-c", "op")
    assert setup.served() == dict.fromkeys(DEVICES, a)
    assert all(g.refused == 0 for g in setup.gates.values())


def test_renewal_and_a_replayed_order_restored(setup):
    a, b, _ = setup.shas
    setup.director.ttl_s = 100.0
    setup.director.order(MODEL, a)
    old = setup.client.hget(setup.keys.director(MODEL), FLEET_SCOPE)
    assert setup.controller.renew_orders() == 0  # far from expiry: nothing to sign
    setup.director.order(MODEL, b)
    assert setup.served() == dict.fromkeys(DEVICES, b)

    setup.client.hset(setup.keys.director(MODEL), FLEET_SCOPE, old)  # replay A's order
    assert setup.controller.renew_orders() == 1  # the director restores B, re-signed
    assert setup.served() == dict.fromkeys(DEVICES, b) and setup.director.replays >= 1

    before = setup.gates["pi-a"].highest
    assert setup.director.renew_due(now=setup.director.current(MODEL).fleet.expires - 10) == 1
    assert setup.served()["pi-a"] == b and setup.gates["pi-a"].highest > before


def test_a_pin_written_around_the_controller_decides_nothing(setup):
    a, b, c = setup.shas
    setup.director.order(MODEL, a)
    setup.client.hset(setup.keys.pins(MODEL), "pi-c", c)  # not through the controller
    assert setup.controller.pins(MODEL) == {}
    rollout = setup.rollout(b)
    setup.controller.promote(rollout, "op")
    setup.controller.step()
    setup.controller.promote(rollout, "op")
    assert setup.served() == dict.fromkeys(DEVICES, b)


def test_the_controller_loop_renews_orders_before_they_expire(setup):
    from cloud.rollout.loop import ControllerLoop

    a = setup.shas[0]
    setup.director.ttl_s = 1.0  # renewed once less than half of it is left
    setup.director.order(MODEL, a)
    first = setup.director.current(MODEL).fleet.counter
    loop = ControllerLoop(setup.controller, 0.05, renew_check_s=0.05)
    loop.start()
    try:
        deadline = time.monotonic() + 1.6
        while time.monotonic() < deadline:  # past the first order's expiry
            assert setup.served()["pi-a"] == a and not setup.gates["pi-a"].stale
            time.sleep(0.05)
    finally:
        loop.stop()
    assert setup.director.current(MODEL).fleet.counter > first and loop.errors == 0


def test_a_withdrawn_device_order_put_back_is_never_signed_again(setup):
    """Replaying a canary's order after its rollback: the edge ignores it (the fleet
    order is newer), and a controller, even a restarted one, deletes it rather than
    renewing it."""
    a, b, _ = setup.shas
    setup.director.order(MODEL, a)
    rollout = setup.rollout(b)
    canary = setup.client.hget(setup.keys.director(MODEL), "device:pi-a")
    setup.controller.rollback(rollout, "op")
    setup.client.hset(setup.keys.director(MODEL), "device:pi-a", canary)
    assert setup.served()["pi-a"] == a
    restarted = Director(setup.client, setup.keys, setup.director.signer)
    restarted.renew(MODEL)
    assert setup.client.hget(setup.keys.director(MODEL), "device:pi-a") is None
    assert setup.served() == dict.fromkeys(DEVICES, a)


def test_a_replayed_fleet_order_is_caught_after_a_restart_with_a_state_file(setup, tmp_path):
    a, b, _ = setup.shas
    state = tmp_path / "director.state"
    director = Director(setup.client, setup.keys, setup.director.signer, state_file=state)
    director.order(MODEL, a)
    old = setup.client.hget(setup.keys.director(MODEL), FLEET_SCOPE)
    director.order(MODEL, b)
    setup.client.hset(setup.keys.director(MODEL), FLEET_SCOPE, old)  # replay A's order
    restarted = Director(setup.client, setup.keys, setup.director.signer, state_file=state)
    restarted.renew(MODEL)  # restores B rather than signing A anew
    assert setup.served() == dict.fromkeys(DEVICES, b) and restarted.replays >= 1
