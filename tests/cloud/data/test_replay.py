"""The trainer's data in Redis: class-balanced reservoirs, recent window, training ring."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.data.replay import DataOptions, NewSamples, SampleCodec, TrainerData
from shared.task import TaskSpec
from shared.tensors import TensorSpec


def make_data(client, keys, **kw) -> TrainerData:
    args = {
        "replay_capacity": 40,
        "holdout_capacity": 20,
        "recent_window": 5,
        "recent_train": 6,
        **kw,
    }
    num_classes, num_features = kw.pop("num_classes", 4), kw.pop("num_features", 3)
    args = {k: v for k, v in args.items() if k not in ("num_classes", "num_features")}
    return TrainerData(client, keys, DataOptions.flat("m", num_classes, num_features, **args))


def add(data: TrainerData, samples: NewSamples) -> None:
    def txn(pipe):
        counters = data.read_counters(pipe)
        writes = data.plan(counters, samples)
        pipe.multi()
        data.add_to(pipe, counters, samples, writes)

    data.client.transaction(txn, *data.watch_keys)


def stream(n: int, labels, holdout_every: int = 0, seed: int = 0) -> NewSamples:
    """Samples whose features all equal their position in the stream."""
    rng = np.random.default_rng(seed)
    return NewSamples(
        X=np.repeat(np.arange(n, dtype=np.float32)[:, None], 3, axis=1),
        y=np.asarray(labels[:n], np.int64),
        buckets=[int(v) for v in labels[:n]],
        draws=[int(d) for d in rng.integers(0, 2**62, size=n)],
        holdout=[bool(holdout_every) and i % holdout_every == 0 for i in range(n)],
    )


def test_samples_round_trip_compactly():
    x = np.array([0.5, -1.25, 3e8], np.float32)
    codec = SampleCodec(TensorSpec.flat(3), TaskSpec.classification([str(c) for c in range(8)]))
    blob = codec.encode(x, 7)
    assert len(blob) == 4 + 3 * 4
    X, y = codec.decode([blob, blob, b"short"])
    assert X.tolist() == [x.tolist(), x.tolist()] and y.tolist() == [7, 7]


def test_replay_stays_class_balanced_and_bounded(redis_client, keys):
    data = make_data(redis_client, keys)
    # Heavily imbalanced stream: class 0 is 85% of it.
    labels = np.where(np.arange(2000) % 20 < 17, 0, np.arange(2000) % 3 + 1)
    samples = stream(2000, labels)
    for chunk in np.array_split(np.arange(2000), 8):
        add(data, samples.subset(chunk))
    _, y = data.replay_set()
    counts = np.bincount(y, minlength=4)
    assert len(y) <= 40 and counts.max() <= 10  # quota = capacity / classes
    assert counts.tolist() == [10, 10, 10, 10]
    c = data.read_counters(redis_client)
    assert sum(c.replay) == 2000


def test_reservoir_keeps_old_and_new_samples(redis_client, keys):
    # A regression keeps one bucket: the reservoir is a plain one of its capacity.
    options = DataOptions("m", TensorSpec.flat(3), TaskSpec.regression(["t"]), replay_capacity=50)
    data = TrainerData(redis_client, keys, options)
    samples = stream(5000, np.zeros(5000, int))
    targets = samples.X[:, :1] * 0.5
    add(data, NewSamples(samples.X, targets, [0] * 5000, samples.draws, samples.holdout))
    X, y = data.replay_set()
    first = X[:, 0]
    # A uniform sample of 0..4999: both halves are represented, each with its target.
    assert len(first) == 50 and y.shape == (50, 1) and np.array_equal(y[:, 0], first * 0.5)
    assert (first < 2500).sum() > 10 and (first >= 2500).sum() > 10


def test_holdout_recent_window_and_training_ring(redis_client, keys):
    data = make_data(redis_client, keys)
    samples = stream(30, np.arange(30) % 4, holdout_every=3)
    add(data, samples.subset(range(15)))
    add(data, samples.subset(range(15, 30)))
    Xr, _ = data.recent_set()
    held = [float(i) for i in range(30) if samples.holdout[i]]
    assert Xr[:, 0].tolist() == held[::-1][:5]  # newest first, window of 5
    assert data.recent_count() == 5
    _, yh = data.holdout_set()
    assert len(yh) == len(held)
    Xt, _ = data.recent_training_set()
    trained_on = [float(i) for i in range(30) if not samples.holdout[i]]
    assert sorted(Xt[:, 0].tolist()) == sorted(trained_on[-6:])  # ring of the last 6
    Xall, _ = data.training_set()
    assert len(Xall) == len(data.replay_set()[1]) + 6


def test_seed_fills_holdout_but_not_the_recent_window(redis_client, keys, parts):
    sizes = {
        "replay_capacity": 100,
        "holdout_capacity": 50,
        "recent_window": 10,
        "recent_train": 10,
    }
    data = TrainerData(redis_client, keys, DataOptions.flat("digits", 10, 64, **sizes))
    data.seed(parts.seed_holdout.X, parts.seed_holdout.y, holdout=True, seed=0)
    X, y = data.holdout_set()
    assert len(y) == 50 and np.bincount(y).tolist() == [5] * 10
    assert data.recent_count() == 0 and len(data.training_set()[1]) == 0
    row = {r.tobytes() for r in parts.seed_holdout.X}
    assert all(r.tobytes() in row for r in X)


@pytest.mark.parametrize("capacity", [4, 7])
def test_quota_never_below_one(redis_client, keys, capacity):
    data = make_data(redis_client, keys, num_classes=10, replay_capacity=capacity)
    add(data, stream(100, np.arange(100) % 10))
    _, y = data.replay_set()
    assert np.bincount(y, minlength=10).max() == 1
