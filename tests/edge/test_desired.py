"""Edges serve their desired version: pin, else rollout assignment, else the fleet target.

Versions are published the way the cloud does (manifest, artifact, announcement);
what each device should serve is then set the way the publisher and the rollout
controller set it (tests/cloud/test_rollout_controller.py covers the controller).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from helpers import desire, make_manifest, publish_version, sign, variant

from edge.daemon import EdgeDaemon
from shared.codec import sha256_hex
from shared.keys import FleetKeys
from shared.messages import SignedManifest
from tests.serving import Signing, wait_for

Factory = Callable[..., EdgeDaemon]

A, B, C = (sha256_hex(variant(n)) for n in (1, 2, 3))


def serving(daemon: EdgeDaemon) -> int | None:
    current = daemon.chain.current
    return current.version if current else None


def publish_abc(client: redis.Redis, keys: FleetKeys, signing: Signing) -> None:
    for v in (1, 2, 3):
        publish_version(client, keys, signing.signer, variant(v), v)


def caught_up(daemon: EdgeDaemon, client: redis.Redis, keys: FleetKeys) -> bool:
    """The edge has read (and handled) every entry of the delta stream."""
    last = client.xrevrange(keys.deltas, count=1)[0][0].decode()
    return daemon.store.deltas_last_id == last


def test_the_target_beats_the_newest_announcement(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    publish_abc(redis_client, keys, signing)
    desire(redis_client, keys, target=A)
    daemon = daemon_factory()
    wait_for(lambda: serving(daemon) == 1, what="the target, v1")
    assert daemon.updater.desired == A and daemon.updater.swaps == 1
    # A newer version announced without moving the target (release "manual") is not taken.
    publish_version(redis_client, keys, signing.signer, variant(4), 4)
    wait_for(lambda: caught_up(daemon, redis_client, keys), what="the announcement read")
    assert serving(daemon) == 1


def test_an_edge_follows_its_assignment_live_and_returns_to_the_target(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    publish_abc(redis_client, keys, signing)
    desire(redis_client, keys, target=A)
    daemon = daemon_factory()
    wait_for(lambda: serving(daemon) == 1, what="v1")

    desire(redis_client, keys, assign={"pi-2": B})  # another device's ring
    wait_for(lambda: caught_up(daemon, redis_client, keys), what="the other notice read")
    assert serving(daemon) == 1

    desire(redis_client, keys, assign={"pi-1": B})
    wait_for(lambda: serving(daemon) == 2, what="the assignment, v2")
    downloads = daemon.updater.full_downloads

    desire(redis_client, keys, assign={"pi-1": None})  # the rollout rolled back
    wait_for(lambda: serving(daemon) == 1, what="back to the target, v1")
    # v1 was still in the local store: the step back downloads nothing.
    assert daemon.updater.full_downloads == downloads
    assert daemon.store.current == A and daemon.store.last_known_good == B
    assert daemon.health().sha256 == A


def test_a_pin_beats_the_assignment_and_the_target(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    publish_abc(redis_client, keys, signing)
    desire(redis_client, keys, target=A, assign={"pi-1": B})
    daemon = daemon_factory()
    wait_for(lambda: serving(daemon) == 2, what="the assignment, v2")
    desire(redis_client, keys, pin={"pi-1": C})
    wait_for(lambda: serving(daemon) == 3, what="the pin, v3")
    desire(redis_client, keys, target=B)  # the fleet moves on; the pinned device does not
    wait_for(lambda: caught_up(daemon, redis_client, keys), what="the target change read")
    assert serving(daemon) == 3
    desire(redis_client, keys, pin={"pi-1": None})
    wait_for(lambda: serving(daemon) == 2, what="unpinned: the assignment again")


def test_an_edge_offline_during_a_change_converges_when_it_starts(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    publish_abc(redis_client, keys, signing)
    desire(redis_client, keys, target=A)
    first = daemon_factory(desired_poll_s=3600)
    wait_for(lambda: serving(first) == 1, what="v1")
    wait_for(lambda: caught_up(first, redis_client, keys), what="stream position saved")
    first.stop()
    # Changed while the device was off, and its notice lost: only the read at start sees it.
    desire(redis_client, keys, assign={"pi-1": C}, notify=False)
    again = daemon_factory(start=False, desired_poll_s=3600)
    assert again.store.current == A
    again.start()
    wait_for(lambda: serving(again) == 3, what="the assignment made while offline, v3")


def test_the_periodic_check_catches_a_change_whose_notice_was_lost(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    publish_abc(redis_client, keys, signing)
    desire(redis_client, keys, target=A)
    daemon = daemon_factory(desired_poll_s=0.5)
    wait_for(lambda: serving(daemon) == 1, what="v1")
    desire(redis_client, keys, assign={"pi-1": B}, notify=False)
    wait_for(lambda: serving(daemon) == 2, what="v2 from the periodic check")


def test_a_fleet_that_gains_a_target_follows_it(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    publish_abc(redis_client, keys, signing)
    daemon = daemon_factory()
    wait_for(lambda: serving(daemon) == 3, what="no target: the newest announcement, v3")
    assert daemon.updater.desired is None
    desire(redis_client, keys, target=B)
    wait_for(lambda: serving(daemon) == 2, what="the new target, v2")


def test_a_refused_desired_version_is_not_fetched_on_every_check(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    publish_version(redis_client, keys, signing.signer, variant(1), 1)
    unsigned = SignedManifest(manifest_json=make_manifest(variant(2), 2).model_dump_json())
    publish_version(redis_client, keys, signing.signer, variant(2), 2, signed=unsigned)
    desire(redis_client, keys, target=A)
    daemon = daemon_factory(desired_poll_s=0.1)
    wait_for(lambda: serving(daemon) == 1, what="v1")
    desire(redis_client, keys, target=B)
    wait_for(lambda: daemon.updater.updates_refused == 1, what="the refusal")
    time.sleep(1.0)  # ten periodic checks
    assert daemon.updater.updates_refused == 1 and serving(daemon) == 1
    assert "unsigned" in (daemon.health().last_error or "")
    # Signed now (the operator fixed it) and announced again: the edge retries at once.
    redis_client.set(keys.manifest(B), sign(signing.signer, make_manifest(variant(2), 2)).to_wire())
    desire(redis_client, keys, target=B)
    wait_for(lambda: serving(daemon) == 2, what="v2 once it verifies")


def test_an_edge_offline_longer_than_the_announcement_history_converges(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    """The deltas stream is capped (MAXLEN ~): an edge whose saved position was trimmed
    away reads what is left and still reaches its desired version, and without one the
    newest announcement."""
    publish_abc(redis_client, keys, signing)
    first = daemon_factory(desired_poll_s=3600)
    wait_for(lambda: serving(first) == 3, what="the newest announcement, v3")
    wait_for(lambda: caught_up(first, redis_client, keys), what="stream position saved")
    saved = first.store.deltas_last_id
    first.stop()
    for v in range(4, 9):
        publish_version(redis_client, keys, signing.signer, variant(v), v)
    redis_client.xtrim(
        keys.deltas, maxlen=2, approximate=False
    )  # the history no longer reaches the saved id
    oldest = redis_client.xrange(keys.deltas, count=1)[0][0].decode()
    assert tuple(map(int, oldest.split("-"))) > tuple(map(int, str(saved).split("-")))
    again = daemon_factory(start=False, desired_poll_s=3600)
    again.start()
    wait_for(lambda: serving(again) == 8, what="the newest announcement left, v8")
    again.stop()
    desire(redis_client, keys, target=B, notify=False)  # and a target set while it was away
    redis_client.xtrim(keys.deltas, maxlen=0, approximate=False)
    third = daemon_factory(start=False, desired_poll_s=3600)
    third.start()
    wait_for(lambda: serving(third) == 2, what="the target set while offline, v2")
