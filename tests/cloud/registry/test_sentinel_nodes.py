"""What a Sentinel-managed pair needs from the registry: an enrolled device's ACL user
on the replica too (users are per server and not replicated), and a revoked one gone
from both. The failover itself: tests/edge/test_sentinel_failover.py."""

from __future__ import annotations

import redis

from cloud.registry.devices import DeviceRegistry
from shared.keys import FleetKeys
from shared.redis_client import connect_redis
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
