"""Director orders on a real redis-server: the controller's key decides what a device
serves; the trainer's key cannot; replayed older orders are refused (even after the
edge restarts); an expired order makes the edge stale and is not followed."""

from __future__ import annotations

import time

import pytest

from cloud.rollout.director import Director
from edge.director import DirectorGate
from shared.director import DirectorOrder, OrderRefused, device_scope, sign_order
from shared.signing import Signer, Verifier, generate_keypair

A, B, C = ("a" * 64, "b" * 64, "c" * 64)


@pytest.fixture
def director_keys():
    private, public = generate_keypair()
    return Signer(private), Verifier(public)


def _gate(keys, verifier, tmp_path) -> DirectorGate:
    return DirectorGate(keys, "digits", "pi-1", [verifier], tmp_path / "director.counter")


def test_device_follows_the_newest_order_and_a_rollback_is_a_new_order(
    redis_client, keys, director_keys, tmp_path
):
    signer, verifier = director_keys
    director = Director(redis_client, keys, signer)
    gate = _gate(keys, verifier, tmp_path)
    director.order("digits", A)
    assert gate.read(redis_client).sha256 == A
    director.order("digits", B, device_scope("pi-1"))  # a canary: this device only
    assert gate.read(redis_client).sha256 == B
    director.order("digits", A, device_scope("pi-1"))  # rollback: higher counter, older version
    order = gate.read(redis_client)
    assert (order.sha256, order.counter) == (A, 3)


def test_replayed_older_order_refused_even_after_restart(
    redis_client, keys, director_keys, tmp_path
):
    signer, verifier = director_keys
    director = Director(redis_client, keys, signer)
    old = director.order("digits", A)
    director.order("digits", B)
    assert _gate(keys, verifier, tmp_path).read(redis_client).sha256 == B
    redis_client.hset(keys.director("digits"), "fleet", old.to_wire())  # replay
    restarted = _gate(keys, verifier, tmp_path)
    with pytest.raises(OrderRefused, match="replayed"):
        restarted.read(redis_client)


def test_order_signed_by_another_key_refused(redis_client, keys, director_keys, tmp_path):
    """The trainer's key (or any key but the director's) cannot order a version."""
    _, verifier = director_keys
    trainer_key = Signer(generate_keypair()[0])
    forged = DirectorOrder(
        fleet=keys.fleet, model="digits", scope="fleet", sha256=C, counter=99, expires=2e9
    )
    redis_client.hset(keys.director("digits"), "fleet", sign_order(trainer_key, forged).to_wire())
    gate = _gate(keys, verifier, tmp_path)
    assert gate.read(redis_client) is None and gate.refused == 1


def test_order_for_another_device_or_fleet_refused(redis_client, keys, director_keys, tmp_path):
    signer, verifier = director_keys
    other = DirectorOrder(
        fleet=keys.fleet, model="digits", scope="device:pi-2", sha256=C, counter=5, expires=2e9
    )
    redis_client.hset(keys.director("digits"), "device:pi-1", sign_order(signer, other).to_wire())
    gate = _gate(keys, verifier, tmp_path)
    assert gate.read(redis_client) is None and gate.refused == 1


def test_expired_order_is_stale_and_renewal_clears_it(redis_client, keys, director_keys, tmp_path):
    signer, verifier = director_keys
    director = Director(redis_client, keys, signer, ttl_s=0.5)
    director.order("digits", A)
    gate = _gate(keys, verifier, tmp_path)
    assert gate.read(redis_client).sha256 == A
    time.sleep(0.6)
    assert gate.read(redis_client) is None and gate.stale
    director.renew("digits")
    assert gate.read(redis_client).sha256 == A and not gate.stale
