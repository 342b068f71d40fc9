"""A Sentinel-managed primary killed while an enrolled edge streams feedback as its own
ACL user: the sentinels promote the replica, the uplink reconnects to it as the same
user, and nothing it had been told was stored is lost.

The test starts a pair of its own (it kills the primary). Run with ``-s`` for the
figures (docs/ARCHITECTURE.md, "A Sentinel-managed pair").
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
from helpers import stream_events

from cloud.registry.devices import DeviceRegistry
from edge.connections import FleetMember
from edge.uplink import FeedbackUplink, UplinkPolicy
from shared.device_identity import DeviceSigner
from shared.keys import FleetKeys
from shared.messages import FeedbackEvent
from shared.redis_client import connect_redis
from shared.retry import Backoff
from tests.edge.failover import X, send_ms
from tests.redis_sentinel import RedisSentinelPair
from tests.serving import wait_for

#: Redis failover semantics, the same whatever runtime serves: the main suite's only.
pytestmark = pytest.mark.failover


def test_a_killed_primary_loses_no_acknowledged_feedback(
    own_sentinel_pair: RedisSentinelPair, tmp_path: Path
) -> None:
    pair = own_sentinel_pair
    keys = FleetKeys("lab")
    stream = keys.feedback_of("digits")
    admin = connect_redis(pair.url, socket_timeout=2)
    creds = DeviceRegistry(admin, keys).enroll("pi-1")  # its user on both data nodes
    user, password = creds.acl_user, creds.password
    signer = DeviceSigner(keys.fleet, "pi-1", creds.private_key)
    member = FleetMember(pair.url_as(user, password), keys, "pi-1", "digits", signer=signer)
    plain, waited = send_ms(member, 0), send_ms(member, 1)
    print(f"\nsend of 16 events: {plain:.2f} ms; with WAIT 1: {waited:.2f} ms (median of 200)")
    admin.delete(stream)

    policy = UplinkPolicy(
        flush_ms=10.0, wait_replicas=1, wait_ms=500, backoff=Backoff(base=0.05, cap=0.5)
    )
    (tmp_path / "edge").mkdir()
    up = FeedbackUplink(member, "e0", tmp_path / "edge", policy)
    up.start()
    total, made = 4000, 0

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
    primary = pair.primary()
    pair.kill(primary)
    killed_at = time.monotonic()
    promoted = wait_for(
        lambda: (p := pair.named_primary()) != primary and p, 30, "the sentinels to promote"
    )
    promote_s = time.monotonic() - killed_at
    producer.join(60)
    # The promoted primary has no replica yet: WAIT 1 fails and the edge keeps spooling,
    # nothing lost, until the killed node is back as its replica.
    assert not up.flush(1.0)
    pair.restart(primary, replica_of=promoted)
    wait_for(lambda: up.flush(1.0), timeout=60, what="the spool drained to the new primary")
    drained = time.monotonic() - killed_at
    up.close(timeout=2.0)

    got = [int(e["event_id"].rsplit(":", 1)[1]) for e in stream_events(admin, stream)]
    first_seen = list(dict.fromkeys(got))
    print(
        f"primary {primary} killed; the sentinels named {promoted} {promote_s:.1f} s later; "
        f"{total} events made, {len(first_seen)} in the stream, "
        f"{len(got) - len(first_seen)} duplicates, {up.spooled} spooled, all in the stream "
        f"{drained:.1f} s after the kill (the killed node back as a replica)"
    )
    assert pair.primary() == promoted != primary
    assert first_seen == list(range(total))  # every event, in order: nothing lost
    assert up.spooled > 0  # the outage was felt, and the spool carried it
    # The device's user was on the replica before the kill: it works on the new primary.
    node = redis.Redis(port=promoted, username=user, password=password)
    assert node.ping() and node.xadd(stream, {"frames": b"x"})
    node.close()
    admin.close()


def _event(event_id: str) -> FeedbackEvent:
    return FeedbackEvent(event_id=event_id, device_id="pi-1", model="digits", x=X, label=1)
