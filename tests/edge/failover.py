"""What the edge's failover tests share (a Redis Cluster's and a Sentinel pair's)."""

from __future__ import annotations

import time

from edge.connections import FleetMember
from edge.uplink import RedisSink
from shared.feedback_stream import frame

#: A sample of the digits' width.
X = [float(i % 17) for i in range(64)]


def send_ms(member: FleetMember, wait_replicas: int, sends: int = 200) -> float:
    """Median time of one 16-event send, in ms."""
    sink = RedisSink(member, batch=16, wait_replicas=wait_replicas)
    lines = [frame(b'{"event_id":"x"}', bytes(256)) for _ in range(16)]
    times = []
    for _ in range(sends):
        t = time.perf_counter()
        sink.add(lines)
        times.append(time.perf_counter() - t)
    sink.close()
    return sorted(times)[len(times) // 2] * 1000
