"""The per-device share cap and quarantine against a real redis-server: a flooding device's
excess waits and is admitted later exactly once; a quarantined device's feedback is kept
aside, and its release queues it again."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.data.admission import admit, device_weights, share_quota
from cloud.data.ingest import FeedbackIngest, IngestOptions
from cloud.data.quarantine import NotQuarantined, Quarantine, suspects
from cloud.data.replay import DataOptions, TrainerData
from shared.messages import DeadLetter, QuarantineRecord

SIZES = {"replay_capacity": 5000, "holdout_capacity": 500, "recent_window": 50}


def staged(client, keys, recent_train: int = 10_000, backlog: int = 0) -> FeedbackIngest:
    """Ingest into staged stores whose ring keeps every admitted sample (to count them)."""
    options = DataOptions.flat("digits", 10, 64, **SIZES, recent_train=recent_train, stage=True)
    data = TrainerData(client, keys, options)
    ingest = FeedbackIngest(
        client,
        keys,
        data,
        IngestOptions(
            model="digits",
            consumer="c1",
            block_ms=10,
            holdout_every=10**6,
            max_device_backlog=backlog,
        ),
    )
    ingest.ensure_group()
    return ingest


def send(ingest, events, device: str, start: int, n: int, label_of=lambda i: i % 10) -> None:
    """``n`` events of ``device`` whose samples say who sent them and which one they are."""
    payloads = [
        events.wire(
            device,
            start + i,
            [float(ord(device[-1])), float(start + i)] + [0.0] * 62,
            label_of(start + i),
        )
        for i in range(n)
    ]
    events.send(ingest.client, ingest.keys.feedback_of("digits"), payloads)
    for _ in range(50):
        if ingest.poll(block_ms=10).entries == 0:
            break


def trained_ids(data: TrainerData) -> list[tuple[int, int]]:
    """(device tag, sample number) of every admitted sample (the ring holds them all)."""
    X, _ = data.recent_training_set()
    return sorted((int(x[0]), int(x[1])) for x in X)


def test_water_filling_quotas():
    assert share_quota({"a": 1000, "b": 100, "c": 100}, 0.5) == {"a": 200, "b": 100, "c": 100}
    assert share_quota({"a": 30, "b": 30, "c": 30}, 0.5) == {"a": 30, "b": 30, "c": 30}
    assert share_quota({"a": 900, "b": 100}, 0.5) == {"a": 100, "b": 100}
    assert share_quota({"a": 900, "b": 100}, 1.0) == {"a": 900, "b": 100}
    assert share_quota({"a": 900}, 0.5, floor=100) == {"a": 100}  # a lone device: the floor
    assert share_quota({"a": 900, "b": 100}, 0.5, floor=150) == {"a": 150, "b": 100}
    for counts in ({"a": 1000, "b": 100, "c": 100}, {"a": 7, "b": 300, "c": 50, "d": 1}):
        q = share_quota(counts, 0.4)
        assert max(q.values()) <= 0.4 * sum(q.values()) + 1e-9


def test_gate_weights_cap_a_device_and_drop_quarantined_ones():
    w = device_weights(["a"] * 90 + ["b"] * 5 + ["c"] * 5 + [None] * 10, 0.5)
    share = w[:90].sum() / w.sum()
    assert share == pytest.approx(0.5) and (w[90:] == 1).all()
    w = device_weights(["a"] * 90 + ["b"] * 10, 0.5, exclude={"a"})
    assert (w[:90] == 0).all() and (w[90:] == 1).all()
    assert device_weights(["a"] * 30 + ["b"] * 10, 0.5).tolist() == pytest.approx(
        [1 / 3] * 30 + [1.0] * 10
    )
    assert device_weights(["a"] * 30, 0.5).tolist() == [1.0] * 30  # alone: nothing to cap


def test_a_flooding_devices_excess_waits_and_is_admitted_later_exactly_once(
    redis_client, keys, events
):
    ingest = staged(redis_client, keys)
    data = ingest.data
    send(ingest, events, "pi-a", 0, 600)
    send(ingest, events, "pi-b", 0, 100)
    send(ingest, events, "pi-c", 0, 100)
    assert data.training_set()[1].size == 0  # nothing trains before a round admits it
    assert data.pending_counts() == {"pi-a": 600, "pi-b": 100, "pi-c": 100}

    first = admit(data, 0.5)
    assert first.admitted == {"pi-a": 200, "pi-b": 100, "pi-c": 100}
    assert first.held_back == {"pi-a": 400, "pi-b": 0, "pi-c": 0}
    assert data.pending_counts() == {"pi-a": 400}  # kept, in Redis

    # An admission with no one else's data admits nothing more of pi-a's (no floor).
    assert admit(data, 0.5).total == 0
    # The others contribute: pi-a's backlog goes in, oldest first.
    send(ingest, events, "pi-b", 100, 200)
    send(ingest, events, "pi-c", 100, 200)
    second = admit(data, 0.5)
    assert second.admitted == {"pi-a": 400, "pi-b": 200, "pi-c": 200}
    assert data.pending_counts() == {}

    sent = sorted(
        [(ord("a"), i) for i in range(600)] + [(ord(d), i) for d in "bc" for i in range(300)]
    )
    assert trained_ids(data) == sent  # every sample admitted once: none lost, none twice
    counts = data.read_counters(redis_client).replay
    assert sum(counts) == len(sent)


def test_a_quarantined_devices_feedback_is_kept_and_a_release_queues_it(redis_client, keys, events):
    ingest = staged(redis_client, keys)
    data = ingest.data
    q = Quarantine(redis_client, keys, "digits")
    send(ingest, events, "pi-a", 0, 50)
    send(ingest, events, "pi-x", 0, 40)
    record = QuarantineRecord(
        device_id="pi-x",
        model="digits",
        reason="test",
        checked=40,
        disagreed=40,
        rate=1.0,
        fleet_rate=0.05,
        bound=0.3,
        p_value=1e-9,
    )
    q.put(record)
    send(ingest, events, "pi-x", 40, 30)  # after the quarantine: kept aside at once
    assert data.pending_counts() == {"pi-a": 50} and q.kept("pi-x") == 70
    assert admit(data, 1.0, quarantined=set(q.members())).admitted == {"pi-a": 50}
    assert data.stats()["quarantined"] == 30

    assert q.release("pi-x") == 70
    assert q.members() == {} and q.kept("pi-x") == 0
    assert data.pending_counts() == {"pi-x": 70}
    assert admit(data, 1.0).admitted == {"pi-x": 70}
    assert len(trained_ids(data)) == 120
    with pytest.raises(NotQuarantined):
        q.release("pi-x")


def simulate(rng, model_error: float, noise: float, flip: bool, n: int) -> tuple[int, int]:
    """(checked, disagreed) of a device whose labels are noisy or flipped, against a model
    that is wrong ``model_error`` of the time on true labels (10 classes)."""
    model_wrong = rng.random(n) < model_error
    label_noise = rng.random(n) < (1.0 if flip else noise)
    # a wrong label disagrees with a right model; with a wrong model, rarely agrees by luck
    disagree = np.where(label_noise, ~(model_wrong & (rng.random(n) < 1 / 9)), model_wrong)
    return n, int(disagree.sum())


def test_only_the_label_flipping_device_is_quarantined_never_honest_noisy_ones():
    rng = np.random.default_rng(0)
    false, caught = 0, 0
    for trial in range(300):
        n = int(rng.integers(100, 2000))
        checks = {f"honest-{i}": simulate(rng, 0.08, 0.0, False, n) for i in range(3)}
        checks["noisy-20"] = simulate(rng, 0.08, 0.20, False, n)  # a sloppy labeler
        checks["noisy-10"] = simulate(rng, 0.08, 0.10, False, int(n * 3))
        if trial % 2 == 0:
            checks["flipper"] = simulate(rng, 0.08, 0.0, True, n)
        found = suspects(checks, margin=0.25, delta=1e-6, min_samples=100)
        false += len(set(found) - {"flipper"})
        caught += "flipper" in found
    assert false == 0
    assert caught == 150  # every flipper, every time


def test_a_lone_device_or_too_few_samples_is_never_judged():
    assert suspects({"flipper": (5000, 5000)}, margin=0.25) == {}
    assert suspects({"a": (500, 20), "flipper": (50, 50)}, margin=0.25, min_samples=100) == {}


def test_a_devices_backlog_is_bounded_and_the_excess_dead_lettered(redis_client, keys, events):
    ingest = staged(redis_client, keys, backlog=250)
    send(ingest, events, "pi-a", 0, 200)
    send(ingest, events, "pi-a", 200, 100)
    send(ingest, events, "pi-b", 0, 20)
    assert ingest.data.pending_counts() == {"pi-a": 250, "pi-b": 20}
    stats = ingest.data.stats()
    assert stats["accepted"] == 270 and stats["deadlettered"] == 50
    letters = [DeadLetter.from_wire(f[b"data"]) for _, f in redis_client.xrange(keys.deadletter)]
    assert len(letters) == 50 and all("max_device_backlog 250" in d.reason for d in letters)
    assert letters[0].payload == "pi-a:e0:250"
    assert ingest.counters.accepted == 270 and ingest.counters.deadlettered == 50
