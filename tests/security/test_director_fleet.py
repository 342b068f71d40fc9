"""The whole fleet path with a director, on a real redis-server with real edge daemons
(TUF root and director key each): the trainer's publisher (release ``direct``, so it
also writes the unsigned target and announces) publishes into TUF; the rollout
controller, with its own director key, moves the fleet through its stages; the edges
install only versions that TUF targets list *and* a director order names.

Attacks shown: the trainer's key alone (a direct release) changes nothing; a raw
unsigned write of the target, an assignment or a pin changes nothing; a replayed old
director order is refused; an order for a version TUF does not list is refused. A
rollback is a new, higher-counter order and is followed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from cloud.rollout.controller import RolloutController
from cloud.rollout.director import Director
from edge.daemon import EdgeDaemon
from shared.codec import sha256_hex
from shared.director import device_scope
from shared.rollouts import RolloutSpec, StageSpec
from shared.signing import Signer, generate_keypair
from tests.edge.helpers import publish_version, variant
from tests.security.test_tuf_repository import Fleet, _request, _serving, _url
from tests.serving import make_settings, wait_for

MODEL = "digits"


@pytest.fixture
def edges(redis_client, keys, tmp_path, signing) -> Iterator[tuple[Fleet, Director, dict]]:
    fleet = Fleet(redis_client, keys)
    fleet.publisher.signer = signing.signer
    fleet.publisher.release = "direct"  # the trainer tries to decide what edges serve
    root = tmp_path / "root.json"
    root.write_bytes(fleet.trusted_root)
    private, public = generate_keypair()
    (tmp_path / "director.pub").write_bytes(public)
    director = Director(redis_client, keys, Signer(private))
    with ExitStack() as stack:
        daemons = {
            device: stack.enter_context(
                EdgeDaemon(
                    make_settings(
                        tmp_path / device,
                        _url(redis_client),
                        signing.public_key,
                        device_id=device,
                        tuf_root=root,
                        director_keys=[tmp_path / "director.pub"],
                        guard_enabled=False,
                        desired_poll_s=0.2,
                    )
                )
            )
            for device in ("pi-a", "pi-b")
        }
        yield fleet, director, daemons


def _serving_all(daemons: dict[str, EdgeDaemon]) -> dict[str, int | None]:
    return {d: _serving(daemon) for d, daemon in daemons.items()}


def test_edges_serve_only_what_the_director_and_tuf_name(edges, redis_client, keys, signing):
    fleet, director, daemons = edges
    started = time.monotonic()
    controller = RolloutController(redis_client, keys, fleet.publisher.registry, director=director)
    v1 = fleet.publisher.publish(_request(1))
    v2 = fleet.publisher.publish(_request(2))  # a direct release: the unsigned target is v2
    wait_for(lambda: len(controller.devices()) == 2, what="both edges reporting")
    assert _serving_all(daemons) == {"pi-a": None, "pi-b": None}

    def rollout(sha: str) -> str:
        spec = RolloutSpec(
            model=MODEL,
            target=sha,
            stages=[StageSpec(name="canary", devices=["pi-a"]), StageSpec(name="all", percent=100)],
        )
        return controller.create(spec, by="op").id

    first = rollout(v1.sha256)
    wait_for(lambda: _serving_all(daemons) == {"pi-a": 1, "pi-b": None}, what="canary on v1")
    controller.promote(first, "op")
    controller.step()
    wait_for(lambda: _serving_all(daemons) == {"pi-a": 1, "pi-b": 1}, what="every edge on v1")
    assert controller.promote(first, "op").state == "completed"

    second = rollout(v2.sha256)
    wait_for(lambda: _serving(daemons["pi-a"]) == 2, what="the canary on v2")
    while_canary = redis_client.hgetall(keys.director(MODEL))
    controller.rollback(second, "op")  # a new, higher-counter order naming v1
    wait_for(lambda: _serving(daemons["pi-a"]) == 1, what="the canary rolled back")

    updater = daemons["pi-a"].models[MODEL].updater
    refused = updater.updates_refused
    # Replay the orders as they were during the canary (each validly signed, older).
    after_rollback = redis_client.hgetall(keys.director(MODEL))
    redis_client.hset(keys.director(MODEL), mapping=while_canary)
    wait_for(lambda: updater.updates_refused > refused, what="the replayed order refused")
    assert "replayed" in (updater.last_error or "") and _serving(daemons["pi-a"]) == 1
    redis_client.delete(keys.director(MODEL))
    redis_client.hset(keys.director(MODEL), mapping=after_rollback)

    # Raw writes by anyone who can write the fleet's keys, and the trainer's own release.
    redis_client.set(keys.target(MODEL), v2.sha256)
    redis_client.hset(keys.assignments(MODEL), "pi-b", v2.sha256)
    redis_client.hset(keys.pins(MODEL), "pi-b", v2.sha256)
    v3 = fleet.publisher.publish(_request(3))
    assert redis_client.get(keys.target(MODEL)).decode() == v3.sha256
    # A version announced and signed with the manifest key but never put into TUF,
    # ordered by the director (as if the controller had been tricked into it).
    rogue = variant(9)
    publish_version(redis_client, keys, signing.signer, rogue, 9)
    b_updater = daemons["pi-b"].models[MODEL].updater
    b_refused = b_updater.updates_refused
    director.order(MODEL, sha256_hex(rogue), device_scope("pi-b"))
    wait_for(lambda: b_updater.updates_refused > b_refused, what="the unlisted version refused")
    assert "do not list" in (b_updater.last_error or "")
    time.sleep(0.6)  # three desired polls
    assert _serving_all(daemons) == {"pi-a": 1, "pi-b": 1}

    third = rollout(v3.sha256)  # the operator's decision: now v3 is served
    controller.promote(third, "op")
    controller.step()
    controller.promote(third, "op")
    wait_for(lambda: _serving_all(daemons) == {"pi-a": 3, "pi-b": 3}, what="every edge on v3")
    assert time.monotonic() - started < 30
