"""Several models per fleet: a feedback stream and consumer groups per model, the
fleet-wide stream of older edges read by every model's trainers, and the upgrade of a
one-model fleet's group and watermarks without losing or training twice any event."""

from __future__ import annotations

import numpy as np

from cloud.data.ingest import FeedbackIngest, IngestOptions
from cloud.data.replay import DataOptions, TrainerData
from cloud.data.watermark import Watermark
from shared.keys import FEEDBACK_GROUP, legacy_feedback_group
from tests.cloud.conftest import EventMaker

SIZES = {"replay_capacity": 500, "holdout_capacity": 200, "recent_window": 50, "recent_train": 50}


def make_ingest(client, keys, model: str, consumer: str = "c1") -> FeedbackIngest:
    data = TrainerData(client, keys, DataOptions.flat(model, 10, 64, **SIZES))
    options = IngestOptions(model=model, consumer=consumer, block_ms=10, max_event_bytes=4096)
    ingest = FeedbackIngest(client, keys, data, options)
    ingest.ensure_group()
    return ingest


def drain(ingest: FeedbackIngest) -> None:
    for _ in range(50):
        if ingest.poll(block_ms=10).entries == 0:
            return


def accepted_ids(ingest: FeedbackIngest) -> set[tuple[str, int]]:
    """The (device stream, seq) pairs the ingest's watermarks hold as seen."""
    out = set()
    for head, raw in ingest.client.hgetall(ingest.seen_key).items():
        w = Watermark.decode(raw)
        out |= {(head.decode(), s) for s in range(w.low + 1)} | {
            (head.decode(), s) for s in w.above
        }
    return out


def test_each_models_trainer_reads_only_its_own_events(redis_client, keys, parts):
    X, y = parts.stream.X[:60], parts.stream.y[:60]
    a, b = EventMaker(model="digits", epoch="ea"), EventMaker(model="shapes", epoch="eb")
    ingest_a = make_ingest(redis_client, keys, "digits")
    ingest_b = make_ingest(redis_client, keys, "shapes")
    # New edges write each model's own stream; an older edge the fleet-wide one, with
    # both models' events in one entry.
    a.send(redis_client, keys.feedback_of("digits"), a.many(X[:20], y[:20]))
    b.send(redis_client, keys.feedback_of("shapes"), b.many(X[20:30], y[20:30]))
    mixed = a.many(X[30:45], y[30:45], start=100) + b.many(X[45:60], y[45:60], start=100)
    redis_client.xadd(keys.feedback, {"events": b"\n".join(mixed)})
    drain(ingest_a)
    drain(ingest_b)

    assert ingest_a.data.stats()["accepted"] == 35 and ingest_b.data.stats()["accepted"] == 25
    assert ingest_a.counters.skipped == ingest_b.counters.skipped == 15
    assert {h for h, _ in accepted_ids(ingest_a)} == {f"pi-{i}:ea" for i in range(3)}
    assert {h for h, _ in accepted_ids(ingest_b)} == {f"pi-{i}:eb" for i in range(3)}
    # Skipping another model's events is no refusal, and leaves nothing pending.
    assert redis_client.xlen(keys.deadletter) == 0
    for model in ("digits", "shapes"):
        assert redis_client.xpending(keys.feedback_of(model), FEEDBACK_GROUP)["pending"] == 0
        assert redis_client.xpending(keys.feedback, legacy_feedback_group(model))["pending"] == 0


def test_another_models_event_on_a_models_own_stream_is_a_dead_letter(redis_client, keys, parts):
    ingest = make_ingest(redis_client, keys, "digits")
    stray = EventMaker(model="shapes").wire("pi-0", 0, parts.stream.X[0], 1)
    redis_client.xadd(keys.feedback_of("digits"), {"data": stray})
    drain(ingest)
    assert ingest.counters.deadlettered == 1 and ingest.counters.skipped == 0


def test_an_event_resent_on_the_other_stream_is_a_duplicate(redis_client, keys, events, parts):
    ingest = make_ingest(redis_client, keys, "digits")
    wires = events.many(parts.stream.X[:30], parts.stream.y[:30])
    events.send(redis_client, keys.feedback, wires)  # before the edge's upgrade
    drain(ingest)
    events.send(redis_client, keys.feedback_of("digits"), wires[20:])  # resent after it
    drain(ingest)
    stats = ingest.data.stats()
    assert stats["accepted"] == 30 and stats["duplicates"] == 10


def test_the_upgrade_from_one_stream_loses_nothing_and_trains_nothing_twice(
    redis_client, keys, events, parts
):
    """A one-model fleet's trainers read the fleet-wide stream in the group ``trainers`` and
    kept their watermarks in ``seen``. At the upgrade the old trainer had accepted (marked seen
    and acked) some entries, read others without accepting them (pending), and not read the rest."""
    n = 60
    wires = events.many(parts.stream.X[:n], parts.stream.y[:n], devices=1)
    events.send(redis_client, keys.feedback, wires)
    redis_client.xgroup_create(keys.feedback, FEEDBACK_GROUP, id="0")
    read = redis_client.xreadgroup(FEEDBACK_GROUP, "old", {keys.feedback: ">"}, count=40)[0][1]
    ids = [entry_id for entry_id, _ in read]
    accepted = [0, 1, 2, 3, 4, *range(10, 40)]  # seq = index: 5..9 still pending
    mark = Watermark.decode(None)
    for seq in accepted:
        mark.add(seq)
    redis_client.hset(keys.seen, "pi-0:e0", mark.encode())
    redis_client.xack(keys.feedback, FEEDBACK_GROUP, *[ids[i] for i in accepted])
    redis_client.sadd(keys.models, "digits")  # the fleet's model had published versions

    ingest = make_ingest(redis_client, keys, "digits")
    drain(ingest)

    # Every event was accepted once: those the old trainer had, and now the rest.
    assert accepted_ids(ingest) == {("pi-0:e0", s) for s in range(n)}
    stats = ingest.data.stats()
    assert stats["accepted"] == n - len(accepted)
    # Read again: the window from the first pending entry to the old group's last read.
    assert stats["duplicates"] == 40 - 5 - 5
    assert not redis_client.exists(keys.seen)  # taken over by the fleet's model
    group = legacy_feedback_group("digits")
    assert redis_client.xpending(keys.feedback, group)["pending"] == 0

    # A second model added later reads the fleet-wide stream too, and skips it all.
    other = make_ingest(redis_client, keys, "shapes")
    drain(other)
    assert other.data.stats()["accepted"] == 0 and redis_client.xlen(keys.deadletter) == 0
    assert not redis_client.exists(keys.seen_of("shapes"))


def test_the_upgrade_starts_after_the_old_groups_last_entry_when_none_is_pending(
    redis_client, keys, events, parts
):
    wires = events.many(parts.stream.X[:20], parts.stream.y[:20], devices=1)
    events.send(redis_client, keys.feedback, wires[:10])
    redis_client.xgroup_create(keys.feedback, FEEDBACK_GROUP, id="0")
    read = redis_client.xreadgroup(FEEDBACK_GROUP, "old", {keys.feedback: ">"}, count=10)[0][1]
    redis_client.xack(keys.feedback, FEEDBACK_GROUP, *[i for i, _ in read])
    # The old trainer's watermarks are gone (a flushed key, say): only the group's
    # position keeps the accepted entries from being read again.
    events.send(redis_client, keys.feedback, wires[10:])
    ingest = make_ingest(redis_client, keys, "digits")
    drain(ingest)
    stats = ingest.data.stats()
    assert stats["accepted"] == 10 and stats["duplicates"] == 0
    assert sorted(s for _, s in accepted_ids(ingest)) == list(range(10, 20))


def test_watermarks_are_per_model(redis_client, keys, parts):
    """Two models' events with the same ids (an edge counting per model) are both accepted."""
    a, b = EventMaker(model="digits"), EventMaker(model="shapes")
    X, y = parts.stream.X[:10], parts.stream.y[:10]
    ingest_a = make_ingest(redis_client, keys, "digits")
    ingest_b = make_ingest(redis_client, keys, "shapes")
    a.send(redis_client, keys.feedback_of("digits"), a.many(X, y))
    b.send(redis_client, keys.feedback_of("shapes"), b.many(X, y))
    drain(ingest_a)
    drain(ingest_b)
    assert ingest_a.data.stats()["accepted"] == ingest_b.data.stats()["accepted"] == 10
    assert np.array_equal(
        sorted(accepted_ids(ingest_a)), sorted(accepted_ids(ingest_b))
    )  # the same ids, accepted by each
