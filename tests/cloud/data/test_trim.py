"""Trimming feedback streams: accepted entries go, what any group still needs stays."""

from __future__ import annotations

import pytest
import redis

from cloud.data.trim import StreamTrimmer
from tests.cloud.data.test_ingest import make_ingest

STREAM = "el:{lab}:feedback:digits"


def ids(client: redis.Redis, stream: str = STREAM) -> list[str]:
    return [i.decode() for i, _ in client.xrange(stream)]


def add(client: redis.Redis, n: int, stream: str = STREAM) -> list[str]:
    return [client.xadd(stream, {"data": b"x%d" % i}).decode() for i in range(n)]


def read(client: redis.Redis, group: str, consumer: str, n: int) -> list[str]:
    reply = client.xreadgroup(group, consumer, {STREAM: ">"}, count=n)
    return [i.decode() for i, _ in reply[0][1]] if reply else []


@pytest.mark.redis_cluster
def test_acked_entries_go_pending_and_unread_stay(redis_client):
    written = add(redis_client, 10)
    redis_client.xgroup_create(STREAM, "trainers", id="0")
    trimmer = StreamTrimmer(redis_client)
    assert trimmer.trim(STREAM) == 0  # nothing read yet: nothing goes
    got = read(redis_client, "trainers", "c1", 6)
    redis_client.xack(STREAM, "trainers", *got[:2], *got[3:6])  # got[2] stays pending
    trimmer.trim(STREAM)
    # the two before the pending one went; the pending one, the acked ones after it and
    # the unread ones stay
    assert ids(redis_client) == written[2:]
    redis_client.xack(STREAM, "trainers", got[2])
    trimmer.trim(STREAM)
    assert ids(redis_client) == written[5:]  # up to the last delivered entry, which stays
    assert read(redis_client, "trainers", "c1", 10) == written[6:]  # the unread are all there


def test_a_second_group_holds_what_it_has_not_read(redis_client):
    written = add(redis_client, 8)
    redis_client.xgroup_create(STREAM, "trainers:a", id="0")
    redis_client.xgroup_create(STREAM, "trainers:b", id="0")
    got = read(redis_client, "trainers:a", "c1", 8)
    redis_client.xack(STREAM, "trainers:a", *got)
    assert StreamTrimmer(redis_client).trim(STREAM) == 0
    got_b = read(redis_client, "trainers:b", "c1", 3)
    redis_client.xack(STREAM, "trainers:b", *got_b)
    StreamTrimmer(redis_client).trim(STREAM)
    assert ids(redis_client) == written[2:]
    assert read(redis_client, "trainers:b", "c1", 10) == written[3:]


def test_a_killed_consumers_pending_entries_are_still_reclaimable(redis_client):
    written = add(redis_client, 6)
    redis_client.xgroup_create(STREAM, "trainers", id="0")
    dead = read(redis_client, "trainers", "dead", 3)  # read, never acked: it died
    alive = read(redis_client, "trainers", "alive", 3)
    redis_client.xack(STREAM, "trainers", *alive)
    StreamTrimmer(redis_client).trim(STREAM)
    assert ids(redis_client) == written
    _, claimed, _ = redis_client.xautoclaim(STREAM, "trainers", "alive", 0, "0-0")
    assert [i.decode() for i, fields in claimed if fields] == dead
    redis_client.xack(STREAM, "trainers", *dead)
    StreamTrimmer(redis_client).trim(STREAM)
    assert ids(redis_client) == written[5:]


def test_a_stream_without_groups_is_left_alone(redis_client):
    add(redis_client, 3)
    assert StreamTrimmer(redis_client).trim(STREAM) == 0
    assert redis_client.xlen(STREAM) == 3
    assert StreamTrimmer(redis_client).trim("el:{lab}:feedback:none") == 0


def test_the_ingest_trims_what_it_accepted_and_keeps_writing_edges_safe(
    redis_client, keys, events, parts
):
    first = make_ingest(redis_client, keys, consumer="c1", trim_interval_s=0.0)
    second = make_ingest(redis_client, keys, consumer="c2", trim_interval_s=0.0)
    stream = keys.feedback_of("digits")
    X, y = parts.stream.X, parts.stream.y
    events.send(redis_client, stream, events.many(X[:50], y[:50]))
    assert len(first.poll(block_ms=10).accepted) == 50
    # while an edge writes more, the second trainer trims: only accepted entries go
    events.send(redis_client, stream, events.many(X[50:80], y[50:80], start=50))
    second.trimmer.trim(stream)
    assert redis_client.xlen(stream) == 31  # the 30 unread and the last delivered one
    assert len(second.poll(block_ms=10).accepted) == 30
    assert redis_client.xlen(stream) == 1
    assert first.data.stats()["accepted"] == 80
