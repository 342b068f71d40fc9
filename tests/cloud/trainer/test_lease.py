"""The round lease on a real redis (cloud/trainer/lease.py): one holder at a time,
lost when not renewed, renewed and released by its holder only."""

from __future__ import annotations

import time

import pytest

from cloud.trainer.lease import Lease

TTL_MS = 60_000  # long: these tests must not depend on timing
SHORT_MS = 200


@pytest.fixture
def lease_key(keys) -> str:
    return keys.trainer_lock("digits")


def test_one_holder_at_a_time(redis_client, lease_key):
    a = Lease(redis_client, lease_key, "trainer-a", TTL_MS)
    b = Lease(redis_client, lease_key, "trainer-b", TTL_MS)
    assert a.refresh() and a.held
    assert not b.refresh() and not b.held
    assert redis_client.get(lease_key) == b"trainer-a"
    assert a.refresh() and not b.refresh()  # still a's after both try again


def test_only_the_holder_renews(redis_client, lease_key):
    a = Lease(redis_client, lease_key, "trainer-a", TTL_MS)
    b = Lease(redis_client, lease_key, "trainer-b", TTL_MS)
    a.refresh()
    redis_client.pexpire(lease_key, 5_000)  # as if most of the TTL had passed
    b.refresh()
    assert redis_client.pttl(lease_key) <= 5_000  # b's renewal did not extend a's lease
    a.refresh()
    assert redis_client.pttl(lease_key) > 5_000  # a's did


def test_only_the_holder_releases(redis_client, lease_key):
    a = Lease(redis_client, lease_key, "trainer-a", TTL_MS)
    b = Lease(redis_client, lease_key, "trainer-b", TTL_MS)
    a.refresh()
    b.release()
    assert redis_client.get(lease_key) == b"trainer-a"
    a.release()
    assert not a.held and redis_client.get(lease_key) is None
    assert b.refresh()  # free for the next one at once, without waiting for a TTL


@pytest.mark.redis_cluster
def test_an_unrenewed_lease_expires_and_another_trainer_takes_over(redis_client, lease_key):
    a = Lease(redis_client, lease_key, "trainer-a", SHORT_MS)
    b = Lease(redis_client, lease_key, "trainer-b", TTL_MS)
    assert a.refresh()
    time.sleep(2 * SHORT_MS / 1000)
    assert not a.held  # by its own clock, before Redis is even asked
    assert b.refresh() and redis_client.get(lease_key) == b"trainer-b"
    # the old holder comes back: it neither takes, extends nor deletes b's lease
    a.release()
    assert not a.refresh() and not a.held
    assert redis_client.get(lease_key) == b"trainer-b"
    assert redis_client.pttl(lease_key) > SHORT_MS


def test_a_holder_busy_for_longer_than_the_lease_keeps_it(redis_client, lease_key):
    """A bootstrap blocks the loop that renews the lease for many TTLs: ``kept`` renews it
    meanwhile, so a standby waits; once the work is done the lease lapses as before."""
    a = Lease(redis_client, lease_key, "trainer-a", ttl_ms=300)
    b = Lease(redis_client, lease_key, "trainer-b", ttl_ms=300)
    assert a.refresh()
    with a.kept():
        for _ in range(10):  # 1 s: over three TTLs
            time.sleep(0.1)
            assert not b.refresh()
    assert a.held
    time.sleep(0.4)
    assert b.refresh() and not a.refresh()
