"""The trainer's data, kept in Redis so that a restarted trainer loses nothing.

Four stores per model (names from ``shared.keys.FleetKeys``):

- the **replay buffer** (hash ``replay(model)``): a class-balanced reservoir of
  training samples, ``capacity // classes`` slots per class with reservoir
  sampling inside a class (a regression has one bucket), so that old data keeps
  being rehearsed (against forgetting) and no class crowds out the others. The
  same hash holds a ring of the most recent training samples (fields
  ``t:<slot>``) and the ingest statistics (``stat:*``).
- the **holdout reservoir** (hash ``holdout(model)``): the same structure for
  held-out samples: the gate's "earlier data".
- the **recent window** (list ``recent(model)``, newest first): the most recent
  held-out samples: the gate's "data as it is now".

With ``DataOptions.stage`` (what the trainer runs), accepted training samples do
not go into the replay buffer at once: they wait in a list per device
(``pending(model, device)``) until a round admits them under the per-device
share cap (cloud/data/admission.py), and a quarantined device's samples are kept
aside in ``quarantined(model, device)`` (cloud/data/quarantine.py). Held-out
samples carry their device (``device_tags``, ``recent_devices``) so that the
gate can cap one device's weight.

Reservoir draws come from the caller (ingest derives them from the event id),
so that a retried transaction makes the same decisions. Writes are *added to a
pipeline* the caller executes, so that accepting a batch, marking it seen and
acking it is one MULTI/EXEC. A stored sample is its truth (an int32 class
index, or the float32 targets) then the sample's raw little-endian bytes in the
input's dtype (``SampleCodec``), never pickled; a flat float classifier's
samples are stored exactly as before tensor inputs.

>>> codec = SampleCodec(TensorSpec.flat(2), TaskSpec.classification(["a", "b", "c", "d"]))
>>> X, y = codec.decode([codec.encode(np.array([1.5, -2.0], np.float32), 3)])
>>> X.tolist(), y.tolist()
([[1.5, -2.0]], [3])
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from shared import replies
from shared.keys import FleetKeys
from shared.task import TaskSpec
from shared.tensors import TensorSpec, to_bytes

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
#: (samples [N, *shape], truths: class indices [N] or targets [N, k]).
Samples = tuple[npt.NDArray[Any], npt.NDArray[Any]]

_LABEL = struct.Struct("<i")
_DRAW = struct.Struct("<Q")
RING_COUNTER = b"t:n"
#: The latest drift's mark (cloud/data/concept.py), in the replay hash.
_DRIFT_HELD, _DRIFT_RING = b"d:held", b"d:ring"
STATS = ("accepted", "duplicates", "deadlettered", "quarantined")


@dataclass(frozen=True)
class SampleCodec:
    """How one model's samples are stored: truth bytes, then the sample's bytes."""

    input: TensorSpec
    task: TaskSpec

    @property
    def truth_bytes(self) -> int:
        return _LABEL.size if self.task.is_classification else 4 * self.task.width

    @property
    def size(self) -> int:
        return self.truth_bytes + self.input.nbytes

    def encode(self, x: npt.ArrayLike, truth: Any) -> bytes:
        """A class index (int32) or targets (float32), then the sample's raw bytes."""
        head = (
            _LABEL.pack(int(truth))
            if self.task.is_classification
            else np.asarray(truth, "<f4").tobytes()
        )
        return head + to_bytes(np.asarray(x, self.input.np_dtype))

    def decode(self, blobs: Iterable[bytes]) -> Samples:
        """Stack stored samples into (X, y); blobs of the wrong size are skipped with a warning."""
        size, head = self.size, self.truth_bytes
        blobs = list(blobs)
        good = [b for b in blobs if len(b) == size]
        if len(good) != len(blobs):
            logger.warning(
                "skipped %d stored samples that are not %d bytes", len(blobs) - len(good), size
            )
        if not good:
            return self.empty()
        raw = np.frombuffer(b"".join(good), np.uint8).reshape(len(good), size)
        X = raw[:, head:].copy().view(self.input.np_dtype).reshape(len(good), *self.input.shape)
        if self.task.is_classification:
            y: npt.NDArray[Any] = raw[:, :head].copy().view("<i4").reshape(-1).astype(np.int64)
        else:
            y = raw[:, :head].copy().view("<f4").astype(np.float32).reshape(len(good), -1)
        return X.astype(self.input.np_dtype.newbyteorder("="), copy=False), y

    def empty(self) -> Samples:
        X = np.zeros((0, *self.input.shape), self.input.np_dtype)
        if self.task.is_classification:
            return X, np.zeros(0, np.int64)
        return X, np.zeros((0, self.task.width), np.float32)


@dataclass(frozen=True)
class NewSamples:
    """Accepted samples on their way into the stores, one row each (columns, not objects,
    because ingest moves tens of thousands of them a second)."""

    X: npt.NDArray[Any]  # [N, *input.shape]
    y: npt.NDArray[Any]  # class indices [N] or targets [N, k]
    buckets: list[int]  # the reservoir bucket: the class, or 0 for a regression
    draws: list[int]  # uniform 64-bit integers fixed per sample (ingest: from the event id)
    holdout: list[bool]
    devices: list[str] | None = None  # the device each came from (None: the seed split)

    def __len__(self) -> int:
        return len(self.buckets)

    def subset(self, index: Sequence[int]) -> NewSamples:
        idx = list(index)
        return NewSamples(
            self.X[idx],
            self.y[idx],
            [self.buckets[i] for i in idx],
            [self.draws[i] for i in idx],
            [self.holdout[i] for i in idx],
            None if self.devices is None else [self.devices[i] for i in idx],
        )

    @staticmethod
    def buckets_of(y: npt.ArrayLike, task: TaskSpec) -> list[int]:
        """Reservoir buckets of truths: the class, or one bucket for every regression sample."""
        if task.is_classification:
            return [int(v) for v in np.asarray(y).reshape(-1)]
        return [0] * len(np.asarray(y))


@dataclass(frozen=True)
class DriftMark:
    """Where the latest drift began, in the trainer's counters: held-out samples and
    training-ring positions accepted before it (cloud/data/concept.py)."""

    held: int
    ring: int


@dataclass
class Counters:
    """Per-class counts seen so far by each reservoir, and the ring position."""

    replay: list[int]
    holdout: list[int]
    ring: int


@dataclass
class Writes:
    """What one batch adds, by field; later samples overwrite earlier ones in a slot."""

    replay: dict[bytes, int] = field(default_factory=dict)
    holdout: dict[bytes, int] = field(default_factory=dict)
    recent: list[int] = field(default_factory=list)
    #: training samples waiting for a round's admission, by device (``DataOptions.stage``)
    pending: dict[str, list[int]] = field(default_factory=dict)
    #: samples of quarantined devices, kept aside, by device
    quarantined: dict[str, list[int]] = field(default_factory=dict)


class ClassReservoir:
    """Slot arithmetic of a class-balanced reservoir stored in one hash (a bucket per class)."""

    def __init__(self, capacity: int, buckets: int) -> None:
        self.buckets = buckets
        self.quota = max(1, capacity // buckets)
        self.count_fields = [f"n:{c}".encode() for c in range(buckets)]

    def place(self, counts: list[int], label: int, draw: int) -> bytes | None:
        """The slot field the sample goes to, or None; advances ``counts[label]``.

        Algorithm R per class: the first ``quota`` samples fill the slots, the
        n-th after that replaces a random slot with probability quota/n.
        """
        n = counts[label]
        counts[label] = n + 1
        slot = n if n < self.quota else draw % (n + 1)
        return f"s:{label}:{slot}".encode() if slot < self.quota else None


@dataclass(frozen=True)
class DataOptions:
    """One model's stores: what a sample and its truth are, and how many each keeps (built
    from the trainer's settings and its dataset; readers need only the first three)."""

    model: str
    input: TensorSpec
    task: TaskSpec
    replay_capacity: int = 2000
    holdout_capacity: int = 1000
    recent_window: int = 200  # most recent held-out samples
    recent_train: int = 300  # most recent training samples, in the ring
    #: training samples wait per device for a round to admit them (cloud/data/admission.py)
    stage: bool = False

    @classmethod
    def flat(cls, model: str, num_classes: int, num_features: int, **sizes: Any) -> DataOptions:
        """The stores of a classifier of flat float samples (what every model was before
        tensor inputs)."""
        labels = [str(c) for c in range(num_classes)]
        return cls(model, TensorSpec.flat(num_features), TaskSpec.classification(labels), **sizes)

    @property
    def buckets(self) -> int:
        """Reservoir buckets: one per class, one for a regression."""
        return self.task.width if self.task.is_classification else 1


class TrainerData:
    """Replay buffer, holdout reservoir, recent window and recent-training ring of one model."""

    def __init__(self, client: redis.Redis, keys: FleetKeys, options: DataOptions) -> None:
        self.client = client
        self.keys = keys
        self.model = options.model
        self.replay_key = keys.replay(options.model)
        self.holdout_key = keys.holdout(options.model)
        self.recent_key = keys.recent(options.model)
        self.tags_key = keys.device_tags(options.model)
        self.recent_devices_key = keys.recent_devices(options.model)
        self.pending_devices_key = keys.pending_devices(options.model)
        self.stage = options.stage
        self.input = options.input
        self.task = options.task
        self.codec = SampleCodec(options.input, options.task)
        self.buckets = options.buckets
        self.replay = ClassReservoir(options.replay_capacity, options.buckets)
        self.holdout = ClassReservoir(options.holdout_capacity, options.buckets)
        self.recent_window = options.recent_window
        self.recent_train = options.recent_train

    @property
    def watch_keys(self) -> list[str]:
        """Keys whose counters a batch's decisions depend on."""
        return [self.replay_key, self.holdout_key]

    # -- writing ------------------------------------------------------------

    def read_counters(self, client: Any) -> Counters:
        """Counters as of now; ``client`` may be a pipeline in WATCH (immediate) mode."""
        r = client.hmget(self.replay_key, [*self.replay.count_fields, RING_COUNTER])
        h = client.hmget(self.holdout_key, self.holdout.count_fields)
        return Counters(
            replay=[int(v or 0) for v in r[:-1]],
            holdout=[int(v or 0) for v in h],
            ring=int(r[-1] or 0),
        )

    def plan(
        self,
        counters: Counters,
        samples: NewSamples,
        quarantined: frozenset[str] = frozenset(),
        *,
        admit: bool = False,
    ) -> Writes:
        """Decide where each sample goes; mutates ``counters`` to their new values.

        A quarantined device's samples are kept aside; with staging, training samples
        wait for admission (``admit``: this is the admission, they go in)."""
        w = Writes()
        rows = zip(samples.buckets, samples.draws, samples.holdout, strict=True)
        devices = samples.devices
        for i, (bucket, draw, held) in enumerate(rows):
            device = devices[i] if devices is not None else None
            if device is not None and device in quarantined:
                w.quarantined.setdefault(device, []).append(i)
                continue
            if not held and self.stage and not admit and device is not None:
                w.pending.setdefault(device, []).append(i)
                continue
            if held:
                slot = self.holdout.place(counters.holdout, bucket, draw)
                if slot is not None:
                    w.holdout[slot] = i
                w.recent.append(i)
                continue
            slot = self.replay.place(counters.replay, bucket, draw)
            if slot is not None:
                w.replay[slot] = i
            if self.recent_train:
                w.replay[f"t:{counters.ring % self.recent_train}".encode()] = i
                counters.ring += 1
        return w

    def add_to(self, pipe: Any, counters: Counters, samples: NewSamples, writes: Writes) -> None:
        """Queue the writes of ``plan`` on ``pipe`` (inside MULTI), encoding each sample once."""
        cache: dict[int, bytes] = {}

        def enc(i: int) -> bytes:
            b = cache.get(i)
            if b is None:
                b = cache[i] = self.codec.encode(samples.X[i], samples.y[i])
            return b

        replay: dict[bytes, bytes | int] = {f: enc(i) for f, i in writes.replay.items()}
        replay.update(zip(self.replay.count_fields, counters.replay, strict=True))
        replay[RING_COUNTER] = counters.ring
        pipe.hset(self.replay_key, mapping=replay)
        holdout: dict[bytes, bytes | int] = {f: enc(i) for f, i in writes.holdout.items()}
        holdout.update(zip(self.holdout.count_fields, counters.holdout, strict=True))
        pipe.hset(self.holdout_key, mapping=holdout)
        devices = samples.devices
        if writes.holdout:
            if devices is not None:
                pipe.hset(self.tags_key, mapping={f: devices[i] for f, i in writes.holdout.items()})
            else:
                pipe.hdel(self.tags_key, *writes.holdout)
        recent = writes.recent[-self.recent_window :]
        if recent:
            pipe.lpush(self.recent_key, *(enc(i) for i in recent))
            pipe.ltrim(self.recent_key, 0, self.recent_window - 1)
            tags = [devices[i] if devices is not None else "" for i in recent]
            pipe.lpush(self.recent_devices_key, *tags)
            pipe.ltrim(self.recent_devices_key, 0, self.recent_window - 1)
        for device, rows in writes.pending.items():
            pipe.rpush(
                self.keys.pending(self.model, device), *(self.kept(samples, i) for i in rows)
            )
            pipe.sadd(self.pending_devices_key, device)
        for device, rows in writes.quarantined.items():
            key = self.keys.quarantined(self.model, device)
            pipe.rpush(key, *(self.kept(samples, i) for i in rows))

    def kept(self, samples: NewSamples, i: int) -> bytes:
        """A sample as it waits (pending or quarantined): its reservoir draw, then the
        stored sample, so that its admission later decides as ingest would have."""
        return _DRAW.pack(samples.draws[i]) + self.codec.encode(samples.X[i], samples.y[i])

    def unpack_kept(self, blobs: Sequence[bytes], device: str) -> NewSamples:
        """Waiting samples back as training samples of ``device`` (bad sizes skipped)."""
        size = _DRAW.size + self.codec.size
        good = [b for b in blobs if len(b) == size]
        if len(good) != len(blobs):
            logger.warning(
                "skipped %d kept samples of %s of the wrong size", len(blobs) - len(good), device
            )
        X, y = self.codec.decode(b[_DRAW.size :] for b in good)
        draws = [_DRAW.unpack_from(b)[0] for b in good]
        n = len(draws)
        return NewSamples(
            X, y, NewSamples.buckets_of(y, self.task), draws, [False] * n, [device] * n
        )

    def add_stats(self, pipe: Any, deltas: dict[str, int]) -> None:
        """Queue increments of the ingest statistics (``accepted``, ``class:3``, ...)."""
        for name, n in deltas.items():
            if n:
                pipe.hincrby(self.replay_key, f"stat:{name}", n)

    def seed(self, X: npt.ArrayLike, y: npt.ArrayLike, *, holdout: bool, seed: int) -> None:
        """Put a dataset split into the replay buffer or the holdout reservoir (bootstrap)."""
        y = np.asarray(y)
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, 2**62, size=len(y))
        samples = NewSamples(
            np.asarray(X, self.input.np_dtype),
            y,
            NewSamples.buckets_of(y, self.task),
            [int(d) for d in draws],
            [holdout] * len(y),
        )

        def txn(pipe: Any) -> None:
            counters = self.read_counters(pipe)
            writes = self.plan(counters, samples)
            writes.recent.clear()  # seed data is "earlier data", never the recent window
            pipe.multi()
            self.add_to(pipe, counters, samples, writes)

        self.client.transaction(txn, *self.watch_keys)

    # -- reading ------------------------------------------------------------

    def training_set(self) -> Samples:
        """Replay buffer plus the recent-training ring (recent samples count twice when in both)."""
        return self.stored(holdout=False)[2]

    def replay_set(self) -> Samples:
        """The replay buffer alone."""
        fields = self._stored(self.replay_key)
        return self.codec.decode(v for k, v in fields.items() if k.startswith(b"s:"))

    def recent_training_set(self) -> Samples:
        fields = self._stored(self.replay_key)
        blobs = [v for k, v in fields.items() if k.startswith(b"t:") and k != RING_COUNTER]
        return self.codec.decode(blobs)

    def holdout_set(self) -> Samples:
        """The holdout reservoir: the gate's earlier data."""
        fields = self._stored(self.holdout_key)
        return self.codec.decode(v for k, v in fields.items() if k.startswith(b"s:"))

    def recent_set(self) -> Samples:
        """The recent window, newest first."""
        blobs = [replies.binary(v) for v in self.client.lrange(self.recent_key, 0, -1)]
        return self.codec.decode(blobs)

    def tagged_holdout_set(self) -> tuple[Samples, list[str | None]]:
        """The holdout reservoir and the device of each sample (None: the seed split)."""
        fields = self._stored(self.holdout_key)
        tags = self._stored(self.tags_key)
        size = self.codec.size
        slots = [(k, v) for k, v in fields.items() if k.startswith(b"s:") and len(v) == size]
        devices = [_tag(tags.get(k)) for k, _ in slots]
        return self.codec.decode(v for _, v in slots), devices

    def tagged_recent_set(self) -> tuple[Samples, list[str | None]]:
        """The recent window (newest first) and the device of each sample."""
        pipe = self.client.pipeline(transaction=True)
        pipe.lrange(self.recent_key, 0, -1)
        pipe.lrange(self.recent_devices_key, 0, -1)
        raw, raw_tags = pipe.execute()
        size = self.codec.size
        tags = [_tag(replies.binary(t)) for t in raw_tags]
        # both lists grow at the head; samples from before tags have none at the tail
        rows = [(replies.binary(v), tags[i] if i < len(tags) else None) for i, v in enumerate(raw)]
        rows = [(b, d) for b, d in rows if len(b) == size]
        return self.codec.decode(b for b, _ in rows), [d for _, d in rows]

    # -- the latest drift (cloud/data/concept.py) ------------------------------

    def mark_drift(self) -> DriftMark:
        """Mark a drift as beginning now, unless the latest mark is still young (fewer
        held-out samples since it than the recent window holds): one drift, seen by
        several signals while the served accuracy falls, is one mark."""
        marks: list[DriftMark] = []

        def txn(pipe: Any) -> None:
            marks.clear()
            held, ring = pipe.hmget(self.replay_key, [_DRIFT_HELD, _DRIFT_RING])
            counters = self.read_counters(pipe)
            if held is not None and sum(counters.holdout) - int(held) < self.recent_window:
                marks.append(DriftMark(int(held), int(ring or 0)))
                pipe.multi()
                return
            # Training samples accepted but not admitted yet (staged) enter the ring before
            # any accepted from now on: the drift's first ring position is after them.
            waiting = sum(self.pending_counts().values()) if self.stage else 0
            marks.append(DriftMark(sum(counters.holdout), counters.ring + waiting))
            pipe.multi()
            pipe.hset(
                self.replay_key, mapping={_DRIFT_HELD: marks[0].held, _DRIFT_RING: marks[0].ring}
            )

        self.client.transaction(txn, self.replay_key, self.holdout_key)
        return marks[0]

    def drift_mark(self) -> DriftMark | None:
        held, ring = self.client.hmget(self.replay_key, [_DRIFT_HELD, _DRIFT_RING])
        if held is None or ring is None:
            return None
        return DriftMark(int(held), int(ring))

    def since_drift(self, mark: DriftMark) -> tuple[Samples, int]:
        """The training samples of the ring accepted since ``mark`` (at most the ring's
        size, oldest first), and how many held-out samples were accepted since it."""
        counters = self.read_counters(self.client)
        first = max(mark.ring, counters.ring - self.recent_train)  # may be ahead of the ring
        fields = [f"t:{i % self.recent_train}".encode() for i in range(first, counters.ring)]
        blobs = self.client.hmget(self.replay_key, fields) if fields else []
        samples = self.codec.decode(replies.binary(b) for b in blobs if b is not None)
        return samples, max(0, sum(counters.holdout) - mark.held)

    def stored(self, holdout: bool) -> tuple[list[bytes], list[bytes], Samples]:
        """The replay buffer and ring (or the holdout reservoir): each sample's field, its
        stored bytes, and the samples, in field order — sorted: a hash's order depends on
        the server's random hash seed, and a round must train on the same sequence
        wherever it runs (deterministic under a seed)."""
        fields = self._stored(self.holdout_key if holdout else self.replay_key)
        prefixes = (b"s:",) if holdout else (b"s:", b"t:")
        slots = sorted((k, v) for k, v in fields.items() if k.startswith(prefixes))
        slots = [(k, v) for k, v in slots if k != RING_COUNTER]
        size = self.codec.size
        good = [(k, v) for k, v in slots if len(v) == size]
        if len(good) < len(slots):
            logger.warning(
                "skipped %d stored samples that are not %d bytes", len(slots) - len(good), size
            )
        blobs = [v for _, v in good]
        return [k for k, _ in good], blobs, self.codec.decode(blobs)

    def forget(self, holdout: bool, fields: Sequence[bytes], blobs: Sequence[bytes]) -> int:
        """Delete stored samples (``fields`` holding exactly ``blobs``: one a batch
        accepted meanwhile has replaced is kept); how many went."""
        key = self.holdout_key if holdout else self.replay_key
        if not fields:
            return 0

        gone: list[bytes] = []

        def txn(pipe: Any) -> None:
            now = [replies.binary(v) if v is not None else None for v in pipe.hmget(key, fields)]
            gone[:] = [f for f, old, new in zip(fields, blobs, now, strict=True) if new == old]
            pipe.multi()
            if gone:
                pipe.hdel(key, *gone)
                if holdout:
                    pipe.hdel(self.tags_key, *gone)

        self.client.transaction(txn, key)
        return len(gone)

    def recent_count(self) -> int:
        return int(self.client.llen(self.recent_key))

    def stats(self) -> dict[str, int]:
        """Ingest statistics and per-class accepted counts (classifiers), from Redis."""
        classes = self.task.width if self.task.is_classification else 0
        names = [f"stat:{s}" for s in STATS] + [f"stat:class:{c}" for c in range(classes)]
        values = self.client.hmget(self.replay_key, names)
        return {n[5:]: int(v or 0) for n, v in zip(names, values, strict=True)}

    def pending_counts(self) -> dict[str, int]:
        """Training samples waiting for admission, by device."""
        devices = sorted(replies.text(d) for d in self.client.smembers(self.pending_devices_key))
        pipe = self.client.pipeline(transaction=False)
        for d in devices:
            pipe.llen(self.keys.pending(self.model, d))
        return {d: int(n) for d, n in zip(devices, pipe.execute(), strict=True) if n}

    def _stored(self, key: str) -> dict[bytes, bytes]:
        """A hash of ours, fields and values as bytes, in the server's order."""
        return {replies.binary(k): replies.binary(v) for k, v in self.client.hgetall(key).items()}


def _tag(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", "replace") if raw else None
