"""A Redis Cluster master killed while an edge streams feedback: its replica takes over,
the uplink reconnects, and nothing it had been told was stored is lost.

The test starts a cluster of its own (it kills one of its masters). Run with ``-s`` for
the figures (docs/ARCHITECTURE.md, "Redis Cluster"): the cost of WAIT per send and
what the failover cost the edge.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
from helpers import stream_events

from edge.connections import FleetMember
from edge.uplink import FeedbackUplink, RedisSink, UplinkPolicy
from shared.feedback_stream import frame
from shared.keys import FleetKeys
from shared.messages import FeedbackEvent
from shared.redis_client import connect_redis
from shared.retry import Backoff
from tests.edge.failover import X, send_ms
from tests.redis_cluster import RedisClusterNodes
from tests.serving import wait_for

#: Redis failover semantics, the same whatever runtime serves: the main suite's only.
pytestmark = pytest.mark.failover


def test_a_killed_master_loses_no_acknowledged_feedback(
    own_cluster: RedisClusterNodes, tmp_path: Path
) -> None:
    keys = FleetKeys("lab")
    stream = keys.feedback_of("digits")
    member = FleetMember(own_cluster.url, keys, "pi-1", "digits")
    admin = connect_redis(own_cluster.url)
    plain, waited = send_ms(member, 0), send_ms(member, 1)
    print(f"\nsend of 16 events: {plain:.2f} ms; with WAIT 1: {waited:.2f} ms (median of 200)")
    admin.delete(stream)
    master = admin.get_node_from_key(stream).port

    policy = UplinkPolicy(
        flush_ms=10.0, wait_replicas=1, wait_ms=500, backoff=Backoff(base=0.05, cap=0.5)
    )
    (tmp_path / "edge").mkdir()
    up = FeedbackUplink(member, "e0", tmp_path / "edge", policy)
    up.start()
    total, made = 4000, 0
    killed_at = 0.0

    def produce() -> None:
        nonlocal made
        for _ in range(total // 50):
            for _ in range(50):
                up.submit(_event(up.new_event_id()))
                made += 1
            time.sleep(0.02)

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.5)
    own_cluster.kill(master)
    killed_at = time.monotonic()
    producer.join(60)
    # The replica takes the slot over, but has no replica of its own: WAIT 1 fails and
    # the edge keeps spooling, nothing lost, until the killed node is back as its replica.
    promoted = wait_for(lambda: _serving(own_cluster, stream, master), 30, "a promoted replica")
    failover_s = time.monotonic() - killed_at
    assert not up.flush(1.0)
    own_cluster.restart(master)
    # flush gives up at each refused attempt: retry until the replica serves the slot
    wait_for(lambda: up.flush(1.0), timeout=60, what="the spool drained to the new master")
    drained = time.monotonic() - killed_at
    up.close(timeout=2.0)

    reader = connect_redis(own_cluster.url)
    new_master = reader.get_node_from_key(stream).port
    got = [int(e["event_id"].rsplit(":", 1)[1]) for e in stream_events(reader, stream)]
    first_seen = list(dict.fromkeys(got))
    print(
        f"master {master} killed; replica {new_master} served the slot {failover_s:.1f} s "
        f"later; {total} events made, {len(first_seen)} in the stream, "
        f"{len(got) - len(first_seen)} duplicates, {up.spooled} spooled, all in the stream "
        f"{drained:.1f} s after the kill (the killed node back as a replica)"
    )
    assert new_master == promoted != master
    assert first_seen == list(range(total))  # every event, in order: nothing lost
    assert up.spooled > 0  # the outage was felt, and the spool carried it


def _serving(cluster: RedisClusterNodes, key: str, dead: int) -> int | None:
    """The port of the master that serves ``key``'s slot, asked of a live node, once it
    is not ``dead``."""
    slot = redis.cluster.key_slot(key.encode())
    live = next(p for p in cluster.procs if p != dead)
    for start, end, master, *_ in cluster.node(live).execute_command("CLUSTER SLOTS"):
        if start <= slot <= end:
            port = int(master[1])
            return port if port != dead else None
    return None


def _event(event_id: str) -> FeedbackEvent:
    return FeedbackEvent(event_id=event_id, device_id="pi-1", model="digits", x=X, label=1)


def test_wait_counts_the_replicas_of_the_streams_own_master(
    redis_cluster: RedisClusterNodes,
) -> None:
    """WAIT goes to the node of the stream's slot: on another master it would count
    that master's replicas, for writes it never saw."""
    redis_cluster.flushall()
    keys = FleetKeys("lab")
    member = FleetMember(redis_cluster.url, keys, "pi-1", "digits")
    sink = RedisSink(member, batch=16, wait_replicas=1, wait_ms=2000)
    sink.add([frame(b'{"event_id":"x"}', b"")])
    sink.close()
    client = connect_redis(redis_cluster.url)
    assert client.xlen(keys.feedback_of("digits")) == 1
    # On the replica of that master the entry is there at once.
    node = client.get_node_from_key(keys.feedback_of("digits"))
    info = redis.Redis(host=node.host, port=node.port).info("replication")
    replica = redis.Redis(host=info["slave0"]["ip"], port=info["slave0"]["port"])
    replica.execute_command("READONLY")
    assert replica.xlen(keys.feedback_of("digits")) == 1
