"""Feedback ingest: dead letters, duplicates, restarts and dead consumers, exactly once."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.data.ingest import FeedbackIngest, IngestOptions
from cloud.data.replay import DataOptions, TrainerData
from cloud.data.watermark import Watermark
from shared.keys import FEEDBACK_GROUP, legacy_feedback_group
from shared.messages import DeadLetter
from shared.retry import Backoff


def make_ingest(client, keys, consumer="c1", **kw) -> FeedbackIngest:
    sizes = {
        "replay_capacity": 500,
        "holdout_capacity": 200,
        "recent_window": 50,
        "recent_train": 50,
    }
    data = TrainerData(client, keys, DataOptions.flat("digits", 10, 64, **sizes))
    args = {"model": "digits", "consumer": consumer, "block_ms": 10, "max_event_bytes": 4096, **kw}
    ingest = FeedbackIngest(client, keys, data, IngestOptions(**args))
    ingest.ensure_group()
    return ingest


def drain(ingest: FeedbackIngest, rounds: int = 20):
    total = None
    for _ in range(rounds):
        b = ingest.poll(block_ms=10)
        total = b if total is None else total
        if b.entries == 0:
            break
    return ingest.counters


def pending(client, keys) -> int:
    return int(client.xpending(keys.feedback, legacy_feedback_group("digits"))["pending"])


def dead_letters(client, keys) -> list[DeadLetter]:
    return [DeadLetter.from_wire(f[b"data"]) for _, f in client.xrange(keys.deadletter)]


@pytest.mark.redis_cluster
def test_valid_events_are_accepted_and_acked(redis_client, keys, events, parts):
    ingest = make_ingest(redis_client, keys)
    events.send(
        redis_client, keys.feedback, events.many(parts.stream.X[:100], parts.stream.y[:100])
    )
    b = ingest.poll()
    assert b.entries == 100 and len(b.accepted) == 100 and b.deadlettered == 0
    assert b.accepted.X.shape == (100, 64) and np.array_equal(b.accepted.X, parts.stream.X[:100])
    assert 5 <= b.accepted.holdout.sum() <= 40  # about one in five held out
    assert pending(redis_client, keys) == 0
    stats = ingest.data.stats()
    assert stats["accepted"] == 100 and sum(stats[f"class:{c}"] for c in range(10)) == 100
    assert b.accepted.first_id < b.accepted.last_id


MALFORMED = {
    "missing field": ({"other": b"x"}, "missing field 'data'"),
    "not json": ({"data": b"{not json"}, "not JSON"),
    "schema": (
        {
            "data": json.dumps(
                {
                    "schema_version": 2,
                    "event_id": "a:e:1",
                    "device_id": "a",
                    "model": "digits",
                    "x": [0.0] * 64,
                    "label": 1,
                }
            ).encode()
        },
        "schema_version 2",
    ),
    "oversize": ({"data": b"{" + b" " * 5000 + b"}"}, "oversize"),
    "feature count": (None, "feature count 3"),
    "nan": (None, "non-finite"),
    "inf": (None, "non-finite"),
    "overflow": (None, "non-finite"),
    "label": (None, "label 10 is not a class"),
    "model": (None, "wrong model 'cats'"),
    "bad id": (None, "invalid event_id"),
    "huge seq": (None, "sequence number not in 0..2**63-1"),
    "type": (
        {"data": b'{"event_id":"a:e:1","device_id":"a","model":"digits","x":"no","label":1}'},
        "invalid: x",
    ),
}


def malformed_fields(kind: str, events) -> dict:
    fields, _ = MALFORMED[kind]
    if fields is not None:
        return fields
    x = [1.0] * 64

    def raw_json(first: float) -> bytes:  # pydantic writes inf/nan as null; edges may send tokens
        return json.dumps(
            {
                "event_id": "a:e0:1",
                "device_id": "a",
                "model": "digits",
                "x": [first, *x[1:]],
                "label": 1,
            }
        ).encode()

    raw = {
        "feature count": events.wire("a", 1, [1.0, 2.0, 3.0], 1),
        "nan": raw_json(float("nan")),
        "inf": raw_json(float("-inf")),
        "overflow": raw_json(1e300),
        "label": events.wire("a", 1, x, 10),
        "model": events.wire("a", 1, x, 1).replace(b'"model":"digits"', b'"model":"cats"'),
        "bad id": events.wire("a", 1, x, 1).replace(b'"a:e0:1"', b'"a-e0-one"'),
        "huge seq": events.wire("a", 2**64, x, 1),
    }[kind]
    return {"data": raw}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_each_malformed_event_is_deadlettered_with_its_reason_and_acked(
    redis_client, keys, events, kind
):
    ingest = make_ingest(redis_client, keys)
    stream = keys.feedback_of("digits")  # on the fleet-wide one, another model's is skipped
    redis_client.xadd(stream, malformed_fields(kind, events))
    redis_client.xadd(stream, {"data": events.wire("ok", 1, [1.0] * 64, 2)})
    b = ingest.poll()
    assert b.deadlettered == 1 and len(b.accepted) == 1
    (letter,) = dead_letters(redis_client, keys)
    assert MALFORMED[kind][1] in letter.reason, letter.reason
    assert letter.source_stream == stream and letter.consumer == "c1"
    assert redis_client.xpending(stream, FEEDBACK_GROUP)["pending"] == 0
    assert ingest.data.stats()["deadlettered"] == 1


def test_an_edge_batch_entry_is_accepted_event_by_event(redis_client, keys, events, parts):
    ingest = make_ingest(redis_client, keys)
    wires = events.many(parts.stream.X[:30], parts.stream.y[:30])
    bad = events.wire("pi-9", 1, [1.0] * 64, 10)
    first = redis_client.xadd(
        keys.feedback, {"events": b"\n".join([*wires[:20], bad, *wires[20:]])}
    )
    redis_client.xadd(keys.feedback, {"events": b"\n".join(wires[25:])})  # a resent tail
    b = ingest.poll()
    assert b.entries == 2 and np.array_equal(b.accepted.X, parts.stream.X[:30])
    assert b.duplicates == 5 and b.deadlettered == 1  # the bad event alone, not its entry
    (letter,) = dead_letters(redis_client, keys)
    assert "label 10 is not a class" in letter.reason
    assert letter.source_id == first.decode() and letter.payload == bad.decode()
    assert pending(redis_client, keys) == 0
    stats = ingest.data.stats()
    assert (stats["accepted"], stats["duplicates"], stats["deadlettered"]) == (30, 5, 1)


def test_a_read_takes_about_read_count_events_whatever_the_entries_hold(
    redis_client, keys, events, parts
):
    ingest = make_ingest(redis_client, keys, read_count=100)
    wires = events.many(np.resize(parts.stream.X, (1000, 64)), np.resize(parts.stream.y, 1000))

    def send(lines: list[bytes]) -> None:
        for i in range(0, len(lines), 25):
            redis_client.xadd(keys.feedback, {"events": b"\n".join(lines[i : i + 25])})

    send(wires[:500])
    assert len(ingest.poll().accepted) == 500  # entries of unknown size: 100 asked for
    send(wires[500:])
    b = ingest.poll()
    assert b.entries == 4 and len(b.accepted) == 100  # 25 events per entry now
    drain(ingest, rounds=30)
    assert ingest.counters.accepted == 1000 and pending(redis_client, keys) == 0


def test_deadletter_stream_is_capped(redis_client, keys):
    ingest = make_ingest(redis_client, keys, deadletter_maxlen=10)
    for _ in range(5):
        events_ = [{"data": b"junk"}] * 200
        pipe = redis_client.pipeline(transaction=False)
        for f in events_:
            pipe.xadd(keys.feedback, f)
        pipe.execute()
        drain(ingest)
    assert ingest.counters.deadlettered == 1000
    assert redis_client.xlen(keys.deadletter) < 300  # MAXLEN ~ trims whole nodes


def test_duplicates_are_dropped_within_and_across_batches(redis_client, keys, events, parts):
    ingest = make_ingest(redis_client, keys)
    wires = events.many(parts.stream.X[:60], parts.stream.y[:60])
    events.send(redis_client, keys.feedback, wires + wires[:10])  # resent in the same batch
    drain(ingest)
    events.send(redis_client, keys.feedback, wires[20:40])  # resent much later
    drain(ingest)
    assert ingest.counters.accepted == 60 and ingest.counters.duplicates == 30
    assert ingest.data.stats()["duplicates"] == 30
    assert pending(redis_client, keys) == 0


def test_out_of_order_sequences_and_the_watermark():
    w = Watermark.decode(None)
    assert [w.add(s) for s in (5, 3, 4, 0, 1, 2, 5, 6)] == [True] * 6 + [False, True]
    assert w.encode() == b"6"
    w2 = Watermark.decode(b"6|8,10")
    assert not w2.add(8) and w2.add(7) and w2.encode() == b"8|10"


def test_lost_gap_is_eventually_given_up(monkeypatch):
    monkeypatch.setattr("cloud.data.watermark.MAX_ABOVE", 4)
    w = Watermark.decode(None)
    for s in range(1, 10):  # seq 0 never arrives
        w.add(s)
    assert w.low == 9 and not w.above


@pytest.mark.redis_cluster
def test_a_killed_consumers_pending_entries_are_reclaimed_exactly_once(
    redis_client, keys, events, parts
):
    ingest_a = make_ingest(redis_client, keys, consumer="alive", claim_idle_ms=100)
    events.send(redis_client, keys.feedback, events.many(parts.stream.X[:40], parts.stream.y[:40]))
    # A consumer reads the entries and dies before accepting them.
    got = redis_client.xreadgroup(
        legacy_feedback_group("digits"), "doomed", {keys.feedback: ">"}, count=100
    )
    assert len(got[0][1]) == 40 and pending(redis_client, keys) == 40
    assert ingest_a.poll().entries == 0  # nothing new, and not idle long enough yet
    time.sleep(0.15)
    ingest_b = make_ingest(redis_client, keys, consumer="survivor", claim_idle_ms=100)
    b = ingest_b.poll()
    assert len(b.accepted) == 40
    time.sleep(0.15)
    drain(ingest_a)
    drain(ingest_b)
    assert pending(redis_client, keys) == 0
    assert ingest_a.data.stats()["accepted"] == 40
    assert ingest_a.counters.accepted + ingest_b.counters.accepted == 40


def test_redis_restart_mid_stream_loses_nothing_and_accepts_nothing_twice(
    redis_server, redis_url, keys, events, parts
):
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    ingest = make_ingest(client, keys, claim_idle_ms=300)
    n = 900
    wires = events.many(np.resize(parts.stream.X, (n, 64)), np.resize(parts.stream.y, n))
    sent = threading.Event()
    backoff = Backoff(base=0.05, cap=0.5)

    def produce() -> None:
        producer = redis.Redis.from_url(redis_url, socket_timeout=2)
        for i in range(0, n, 30):
            chunk = wires[i : i + 30]
            backoff.call(
                lambda c=chunk: events.send(producer, keys.feedback, c),
                retry_on=(redis.ConnectionError, redis.TimeoutError),
            )
            time.sleep(0.01)
        sent.set()

    threading.Thread(target=produce, daemon=True).start()
    restarted = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not restarted and ingest.counters.accepted > n // 3:
            redis_server.restart(downtime=0.3)
            restarted = True
        try:
            ingest.poll(block_ms=20)
            stats = ingest.data.stats()
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(0.05)
            continue
        if sent.is_set() and stats["accepted"] >= n and pending(client, keys) == 0:
            break
    assert restarted
    stats = ingest.data.stats()
    assert stats["accepted"] == n  # every unique event, once
    counters = ingest.data.read_counters(client)
    assert sum(counters.replay) + sum(counters.holdout) == n
    assert pending(client, keys) == 0
    client.close()


payload = st.one_of(
    st.binary(max_size=300),
    st.dictionaries(
        st.sampled_from(
            ["event_id", "device_id", "model", "x", "label", "schema_version", "predicted"]
        ),
        st.one_of(
            st.none(),
            st.integers(-5, 2**70),
            st.floats(),
            st.text(max_size=20),
            st.lists(st.floats(), max_size=70),
        ),
        max_size=7,
    ).map(lambda d: json.dumps(d).encode()),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payloads=st.lists(payload, min_size=1, max_size=8))
def test_random_payloads_never_escape_the_ingest_loop(redis_client, keys, payloads):
    redis_client.flushall()
    ingest = make_ingest(redis_client, keys)
    for p in payloads:
        redis_client.xadd(keys.feedback, {"data": p})
    b = ingest.poll()
    assert b.entries == len(payloads)
    assert len(b.accepted) + b.duplicates + b.deadlettered == len(payloads)
    assert pending(redis_client, keys) == 0
