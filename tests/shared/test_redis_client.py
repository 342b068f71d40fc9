"""shared/redis_client.py: cluster URLs, one slot per fleet, and a clear error for a
server that is not a cluster (tests/cloud/registry/test_cluster_nodes.py has the rest)."""

from __future__ import annotations

import pytest
import redis
from redis.cluster import key_slot

from shared.keys import FleetKeys
from shared.redis_client import NotACluster, connect_redis, parse_cluster_url
from shared.transport import RedisSettings, check_redis_url, tls_options


def every_key(keys: FleetKeys) -> list[str]:
    """Every name ``keys`` gives (each method called with a valid argument)."""
    names = []
    for attr in dir(keys):
        if attr.startswith("_") or attr in ("fleet", "family", "owns", "device_user"):
            continue
        value = getattr(keys, attr)
        if isinstance(value, str):
            names.append(value)
        elif callable(value):
            n = value.__code__.co_argcount - 1
            names.append(value(*(["ab", "cd"][:n])))
    names += [keys.family(f) for f in ("pins", "artifact")]
    return names


def test_every_key_of_a_fleet_is_in_one_slot_and_fleets_spread_over_the_masters() -> None:
    keys = every_key(FleetKeys("lab"))
    assert len(keys) > 50
    assert {key_slot(k.encode()) for k in keys} == {key_slot(b"{lab}")}
    # 3 masters own about a third of the slots each: 30 fleets land on all of them
    ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
    slots = [key_slot(FleetKeys(f"fleet-{i}").feedback.encode()) for i in range(30)]
    assert all(any(lo <= s <= hi for s in slots) for lo, hi in ranges)


def test_cluster_urls_are_checked_like_one_servers() -> None:
    assert parse_cluster_url("rediss+cluster://u:pw@[::1]:7000/") == (
        "rediss://u:pw@[::1]:7000/",
        [("::1", 7000)],
    )
    for bad, why in (
        ("redis+cluster://cache/0", "needs host:port"),
        ("redis+cluster:///0", "at least one node"),
        ("redis+cluster://cache:7000/2", "only database 0"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_cluster_url(bad)
    check_redis_url("redis+cluster://localhost:7000,127.0.0.1:7001", "production")
    check_redis_url("rediss+cluster://a.lab:7000,b.lab:7000", "production")
    with pytest.raises(ValueError, match="plaintext to a remote host"):
        check_redis_url("redis+cluster://127.0.0.1:7000,b.lab:7000", "production")
    assert "ssl_cert_reqs" in tls_options("rediss+cluster://a.lab:7000")
    s = RedisSettings(redis_url="redis+cluster://127.0.0.1:7000")
    assert s.redis_options() == {}
    with pytest.raises(ValueError, match="is not rediss://"):
        RedisSettings(redis_url="redis+cluster://127.0.0.1:7000", redis_ca_file="ca.pem")


def test_a_cluster_url_at_one_server_says_so(redis_url: str) -> None:
    client = connect_redis(redis_url.replace("redis://", "redis+cluster://").rsplit("/", 1)[0])
    with pytest.raises(NotACluster, match=r"is not a Redis Cluster.*redis://"):
        client.ping()
    with pytest.raises(redis.ConnectionError, match="cannot reach the Redis Cluster"):
        connect_redis("redis+cluster://127.0.0.1:1", socket_connect_timeout=1).ping()
