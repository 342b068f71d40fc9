"""What a Sentinel-managed pair needs from the registry: an enrolled device's ACL user
on the replica too (users are per server and not replicated), and a revoked one gone
from both; a publish confirmed by the replica, or reported. The failover itself:
tests/edge/test_sentinel_failover.py."""

from __future__ import annotations

import pytest
import redis

from cloud.registry.devices import DeviceRegistry
from cloud.registry.publisher import Publisher, PublishNotReplicated
from cloud.registry.versions import DirBlobStore, Registry
from shared.keys import FleetKeys
from shared.redis_client import connect_redis
from tests.cloud.registry.test_publish_failover import MODEL, _request
from tests.redis_sentinel import RedisSentinelPair


def test_enrol_and_revoke_reach_the_replica(redis_sentinel: RedisSentinelPair) -> None:
    client = connect_redis(redis_sentinel.url)
    keys = FleetKeys("lab")
    registry = DeviceRegistry(client, keys)
    creds = registry.enroll("pi-s")
    for port in redis_sentinel.ports:  # the primary and the replica
        node = redis.Redis(port=port, username=creds.acl_user, password=creds.password)
        assert node.ping()
        node.close()
    device = connect_redis(redis_sentinel.url_as(creds.acl_user, creds.password), socket_timeout=2)
    device.xadd(keys.feedback_of("digits"), {"frames": b"x"})
    assert client.xlen(keys.feedback_of("digits")) == 1
    device.close()
    registry.revoke("pi-s")
    for port in redis_sentinel.ports:
        with redis_sentinel.node(port) as node:
            assert node.acl_getuser(creds.acl_user) is None
    client.delete(keys.feedback_of("digits"), keys.device_registry)
    client.close()


def test_a_publish_on_a_pair_is_confirmed_by_its_replica_or_reported(
    own_sentinel_pair: RedisSentinelPair, tmp_path, signing
) -> None:
    """``publish_wait_replicas`` on a Sentinel pair: the confirmation's WAIT runs on the
    primary's connection that rewrote the version's record, so the replica's copy is what
    it counts; with the replica gone the publish is reported unconfirmed, not lost silently."""
    pair = own_sentinel_pair
    keys = FleetKeys("lab")
    client = connect_redis(pair.url)
    registry = Registry(client, keys, DirBlobStore(tmp_path / "blobs"))
    publisher = Publisher(registry, signing.signer, wait_replicas=1, wait_ms=1000)
    first = publisher.publish(_request(1))
    replica = next(p for p in pair.ports if p != pair.primary())
    with pair.node(replica) as node:
        assert node.zscore(keys.versions(MODEL), first.sha256) is not None  # it was confirmed there
    pair.kill(replica)
    with pytest.raises(PublishNotReplicated, match="0 of 1 replica"):
        publisher.publish(_request(2))
    assert [v for v, _ in publisher.versions(MODEL)] == [1, 2]  # listed whole, reported
    client.close()
