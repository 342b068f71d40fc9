"""What a real Redis Cluster needs from the cloud's code: a device's user on every node,
replicas included, and a script queued in a MULTI pipeline (how a status and its counting
are written). The rest of the cluster's tests: tests/shared/test_redis_client.py and the
tests marked ``redis_cluster``."""

from __future__ import annotations

import pytest
import redis

from cloud.registry.devices import DeviceRegistry
from shared.keys import FleetKeys
from shared.redis_client import connect_redis
from tests.redis_cluster import RedisClusterNodes


def test_a_users_and_a_transactions_script_work_on_every_node(
    redis_cluster: RedisClusterNodes,
) -> None:
    redis_cluster.flushall()
    client = connect_redis(redis_cluster.url)
    keys = FleetKeys("lab")
    creds = DeviceRegistry(client, keys).enroll("pi-a")
    # The device's user exists on each node, replicas included (a failover keeps it).
    for port in redis_cluster.ports:
        node = redis.Redis(port=port, username=creds.acl_user, password=creds.password)
        assert node.ping()
        node.close()
    device = connect_redis(redis_cluster.url, username=creds.acl_user, password=creds.password)
    device.xadd(keys.feedback_of("digits"), {"frames": b"x"})  # routed by its slot
    assert client.xlen(keys.feedback_of("digits")) == 1
    # A script queued in a MULTI pipeline (how a status and its counting are written).
    script = client.register_script("return redis.call('incrby', KEYS[1], ARGV[1])")
    pipe = client.pipeline()
    pipe.set(keys.counts_cursor, 1)
    script(keys=[keys.counts_cursor], args=[2], client=pipe)
    assert pipe.execute() == [True, 3]
    DeviceRegistry(client, keys).revoke("pi-a")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(
            port=redis_cluster.ports[-1], username=creds.acl_user, password=creds.password
        ).ping()
