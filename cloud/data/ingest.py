"""Feedback ingest: a model's feedback streams into the trainer's data, exactly once.

A model's trainers read two streams (``Source``):

- its own, ``FleetKeys.feedback_of(model)``, in the consumer group
  ``shared.keys.FEEDBACK_GROUP``: what edges write since streams per model, so
  one model's trainer never reads another's events;
- the fleet-wide ``FleetKeys.feedback``, where edges that predate streams per
  model still write, in the group ``legacy_feedback_group(model)``: each model
  has its own group there, and skips (acks, without a dead letter) the events
  of other models. When that group is first made where the one-model trainers'
  group ``FEEDBACK_GROUP`` exists, it starts where that group stopped (before its
  first pending entry, else at its last delivered id): nothing the old trainers
  left is lost, and what they accepted is not read again but for the pending
  window, whose accepted events the watermarks then drop.

Each poll first takes over entries a dead consumer left pending (XAUTOCLAIM,
idle longer than ``claim_idle_ms``), then reads new ones (XREADGROUP: the
fleet-wide stream without blocking, then the model's own), and handles all of
them the same way, one stream's entries at a time:

1. every event is parsed once (an entry holds an edge's batch of events, or
   one); a bad event (oversize, not JSON, unknown schema version, invalid
   fields, wrong model on the model's own stream, a sample that does not fit
   the input, NaN/inf, a label out of range or targets of the wrong width) or an
   entry without events becomes a ``DeadLetter`` with the reason;
2. one WATCH/MULTI/EXEC transaction reads the idempotency watermarks of the
   batch's device streams (hash ``FleetKeys.seen_of(model)``, one for both
   streams, so an event resent on the other stream is a duplicate too) and the
   reservoir counters, drops duplicates, then marks the rest seen, writes them
   into the replay buffer / holdout / recent window, adds the dead letters and
   XACKs every entry. A crash at any point either redelivers the batch (nothing
   happened) or has fully accepted it, and the watermarks make redelivery harmless.

Every ``trim_interval_s`` a poll trims each stream it read to the oldest entry that
one of its consumer groups still needs (cloud/data/trim.py): accepted feedback
leaves Redis, pending and unread entries stay.

The watermarks of a fleet from before streams per model (``FleetKeys.seen``) are
taken over, once, by the first trainer of a model that has published versions
(that fleet's one model): ``adopt_legacy_watermarks``.

Validation lives in cloud/data/validation.py, the watermarks in cloud/data/watermark.py.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import redis

from cloud.data.replay import NewSamples, TrainerData, Writes
from cloud.data.trim import StreamTrimmer
from cloud.data.validation import Entry, Events, FeedbackValidator, Refused, payload_of
from cloud.data.watermark import Watermark
from shared import replies
from shared.device_identity import DEVICE_FIELD, FEEDBACK, SIG_FIELD, DeviceKeyring
from shared.holdout import draws, held_out_draws
from shared.keys import (
    FEEDBACK_BATCH_FIELD,
    FEEDBACK_FRAMES_FIELD,
    FEEDBACK_GROUP,
    FleetKeys,
    legacy_feedback_group,
)
from shared.messages import DeadLetter

logger = logging.getLogger(__name__)


def stream_id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a tuple that sorts like Redis does."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Source:
    """A stream a model's trainers read, with their consumer group on it."""

    stream: str
    group: str
    shared: bool  # the fleet-wide stream: events of other models are skipped


def before(entry_id: str) -> str:
    """The stream id just before ``entry_id``: a group made there delivers it first.

    >>> before("1700-3"), before("1700-0")
    ('1700-2', '1699-18446744073709551615')
    """
    ms, seq = stream_id_key(entry_id)
    return f"{ms}-{seq - 1}" if seq else f"{ms - 1}-{2**64 - 1}"


@dataclass
class Accepted:
    """The samples one poll accepted, for the drift detector and the round trigger."""

    X: npt.NDArray[Any]  # [N, *input.shape]
    y: npt.NDArray[Any]  # class indices [N] or targets [N, k]
    served: npt.NDArray[np.float64]  # the served answer's score (1/0, or |error|); nan: unknown
    holdout: npt.NDArray[np.bool_]
    first_id: str | None = None
    last_id: str | None = None
    devices: list[str] = field(default_factory=list)  # the device of each sample

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Batch:
    """What one poll did."""

    entries: int
    accepted: Accepted
    duplicates: int = 0
    deadlettered: int = 0
    reasons: list[str] = field(default_factory=list)
    skipped: int = 0  # other models' events on the fleet-wide stream
    quarantined: int = 0  # quarantined devices' events, kept aside (cloud/data/quarantine.py)


@dataclass
class Counters:
    """Totals since this ingest started (Redis keeps the fleet-wide ones: TrainerData.stats)."""

    accepted: int = 0
    duplicates: int = 0
    deadlettered: int = 0
    skipped: int = 0
    per_class: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestOptions:
    """How a trainer reads its model's feedback (built from the trainer's settings)."""

    model: str
    consumer: str  # this process's name in the consumer group
    holdout_every: int = 5  # every k-th accepted sample is held out
    read_count: int = 1000  # feedback events per read, about
    block_ms: int = 500
    claim_idle_ms: int = 30000  # a pending entry idle this long is taken over
    max_event_bytes: int = 65536
    deadletter_maxlen: int = 10000
    #: also read the fleet-wide stream, where edges that predate streams per model write
    read_shared_stream: bool = True
    #: training samples one device may have waiting for admission (0: no limit); beyond
    #: it, its new ones are dead-lettered with the reason
    max_device_backlog: int = 0
    #: trim the streams read to what no consumer group still needs, at most this often
    #: (seconds; negative: never): cloud/data/trim.py
    trim_interval_s: float = 5.0


class FeedbackIngest:
    """Reads, validates, deduplicates and accepts feedback for one model."""

    def __init__(
        self, client: redis.Redis, keys: FleetKeys, data: TrainerData, options: IngestOptions
    ) -> None:
        self.client = client
        self.keys = keys
        self.data = data
        self.options = options
        self.validator = FeedbackValidator(
            model=options.model,
            input=data.input,
            task=data.task,
            max_event_bytes=options.max_event_bytes,
        )
        #: Enrolled devices' keys: once the fleet has one, only signed entries are accepted.
        self.devices = DeviceKeyring(client, keys)
        self.counters = Counters()
        self._next_claim = 0.0
        self._events_per_entry = 1.0  # in the last entries read; see _entries_per_read
        self.trimmer = StreamTrimmer(client, options.trim_interval_s)

    # -- reading --------------------------------------------------------------

    @property
    def own(self) -> Source:
        """The model's own stream."""
        return Source(self.keys.feedback_of(self.options.model), FEEDBACK_GROUP, shared=False)

    @property
    def shared(self) -> Source:
        """The fleet-wide stream of edges that predate streams per model."""
        group = legacy_feedback_group(self.options.model)
        return Source(self.keys.feedback, group, shared=True)

    @property
    def sources(self) -> list[Source]:
        return [self.shared, self.own] if self.options.read_shared_stream else [self.own]

    @property
    def seen_key(self) -> str:
        return self.keys.seen_of(self.options.model)

    def ensure_group(self) -> None:
        """Create the consumer groups (and the streams) unless they exist, after taking
        over the watermarks of a fleet from before watermarks per model."""
        self.adopt_legacy_watermarks()
        self._create_group(self.own, "0")
        if self.options.read_shared_stream:
            self._create_group(self.shared, self._shared_start())

    def _create_group(self, source: Source, start: str) -> None:
        try:
            self.client.xgroup_create(source.stream, source.group, id=start, mkstream=True)
            logger.info("created consumer group %s on %s at %s", source.group, source.stream, start)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def _shared_start(self) -> str:
        """Where this model's group on the fleet-wide stream starts: where the one-model
        trainers' group stopped, or at the beginning (other models' events are skipped)."""
        stream = self.keys.feedback
        if not self.client.exists(stream):
            return "0"
        groups = {replies.text(g["name"]): g for g in self.client.xinfo_groups(stream)}
        if self.shared.group in groups or FEEDBACK_GROUP not in groups:
            return "0"
        old = groups[FEEDBACK_GROUP]
        # Entries pending in the old group were not accepted (acceptance acks in the same
        # transaction): they are read again. Accepted entries after the first pending one
        # are read again too, and dropped by the watermarks.
        first_pending = self.client.xpending(stream, FEEDBACK_GROUP)
        if first_pending["pending"]:
            return before(replies.text(first_pending["min"]))
        return replies.text(old["last-delivered-id"])

    def adopt_legacy_watermarks(self) -> bool:
        """Take over ``FleetKeys.seen`` as this model's watermarks when this model has
        published versions (it is the fleet's model from before streams per model) and has
        no watermarks of its own yet; once, atomically (RENAME), for one model only."""
        legacy, mine = self.keys.seen, self.seen_key
        if not self.client.sismember(self.keys.models, self.options.model):
            return False
        adopted = False

        def txn(pipe: Any) -> None:
            nonlocal adopted
            adopted = bool(pipe.exists(legacy)) and not pipe.exists(mine)
            pipe.multi()
            if adopted:
                pipe.rename(legacy, mine)

        self.client.transaction(txn, legacy, mine)
        if adopted:
            logger.info("took over the fleet's feedback watermarks %s as %s", legacy, mine)
        return adopted

    def poll(self, block_ms: int | None = None) -> Batch:
        """Reclaim a dead consumer's entries when due, then read new ones; accept them.

        The fleet-wide stream is read without blocking; the model's own stream blocks for
        ``block_ms`` only when nothing else was read."""
        block = self.options.block_ms if block_ms is None else block_ms
        try:
            # One transaction per stream and read: each batch must be in stream order (see _batch).
            batches = [self.process(entries, src) for src, entries in self._claim_due()]
            for src in self.sources:
                got = any(b.entries for b in batches)
                wait = block if src == self.own and not got else None
                batches.append(self.process(self._read(src, wait), src))
            total = batches[0]
            for b in batches[1:]:
                total = _merge(total, b)
            self._trim()
            return total
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            logger.warning("a consumer group is gone (stream deleted?); creating it again")
            self.ensure_group()
            return self.process([])

    def _trim(self) -> None:
        """Drop the entries every group has accepted (rate-limited; a failure is logged:
        trimming must never stop the ingest)."""
        for src in self.sources:
            try:
                self.trimmer.maybe_trim(src.stream)
            except redis.ResponseError as e:
                logger.warning("could not trim %s: %s", src.stream, e)

    def _entries_per_read(self) -> int:
        """Stream entries to ask for so that a read holds about ``read_count`` events.

        An entry holds one event (older edges, tools) or an edge's batch; the
        last read tells which. When that changes, one read overshoots, by at most
        an edge's ``feedback_batch`` events per entry.
        """
        return max(1, round(self.options.read_count / self._events_per_entry))

    def _read(self, source: Source, block: int | None) -> list[Entry]:
        # redis-py types the reply for both protocols and for decoded responses; this
        # client speaks RESP2 in bytes: [(stream, [(id, fields), ...])] or None
        reply = cast(
            list[tuple[bytes, list[Entry]]] | None,
            self.client.xreadgroup(
                source.group,
                self.options.consumer,
                {source.stream: ">"},
                count=self._entries_per_read(),
                block=block,
            ),
        )
        return list(reply[0][1]) if reply else []

    def _claim_due(self) -> list[tuple[Source, list[Entry]]]:
        now = time.monotonic()
        if now < self._next_claim:
            return []
        self._next_claim = now + max(self.options.claim_idle_ms / 2000.0, 0.05)
        claimed = [(src, self.reclaim(src)) for src in self.sources]
        return [(src, entries) for src, entries in claimed if entries]

    def reclaim(self, source: Source | None = None) -> list[Entry]:
        """Entries of ``source`` (default: the model's own stream) pending longer than
        ``claim_idle_ms`` on any consumer, now ours."""
        src = source or self.own
        entries: list[Entry] = []
        cursor: bytes | str = "0-0"
        wanted = self._entries_per_read()
        while len(entries) < wanted:
            reply = self.client.xautoclaim(
                src.stream,
                src.group,
                self.options.consumer,
                self.options.claim_idle_ms,
                start_id=cursor,
                count=wanted - len(entries),
            )
            cursor, claimed = reply[0], reply[1]
            entries += [e for e in claimed if e and e[1] is not None]
            if cursor in (b"0-0", "0-0"):
                break
        if entries:
            logger.info(
                "reclaimed %d pending feedback entries of %s from dead consumers",
                len(entries),
                src.stream,
            )
        return entries

    # -- accepting ------------------------------------------------------------

    def process(self, entries: list[Entry], source: Source | None = None) -> Batch:
        """Validate ``entries`` of ``source`` (default: the model's own stream), then accept,
        dead-letter and ack them in one transaction."""
        src = source or self.own
        signed, owners, forged = self._signed(entries)
        events, dead = self.validator.parse_entries(
            signed, skip_other_models=src.shared, owners=owners
        )
        dead = forged + dead
        if entries:
            self._events_per_entry = (len(events) + len(dead) + events.skipped) / len(entries)
        batch = self._commit(src, events, dead, [e[0] for e in entries])
        self._count(batch)
        return batch

    def _signed(
        self, entries: list[Entry]
    ) -> tuple[list[Entry], dict[str, str] | None, list[Refused]]:
        """The entries whose device signature verifies, the device each was signed by
        (its events must carry that ``device_id``), and the refused ones with the reason.
        A fleet without enrolled devices accepts unsigned entries (development)."""
        if not entries or not self.devices.enforcing:
            return entries, None, []
        signed: list[Entry] = []
        owners: dict[str, str] = {}
        forged: list[Refused] = []
        for raw_id, fields in entries:
            entry_id = replies.text(raw_id)
            payload = fields.get(FEEDBACK_FRAMES_FIELD.encode())
            if payload is None:
                payload = fields.get(FEEDBACK_BATCH_FIELD.encode(), fields.get(b"data", b""))
            device = fields.get(DEVICE_FIELD.encode())
            device_id = device.decode("utf-8", "replace") if device else None
            why = self.devices.check(FEEDBACK, device_id, payload, fields.get(SIG_FIELD.encode()))
            if why is not None:
                forged.append((entry_id, why, payload_of(fields)))
                continue
            assert device_id is not None
            owners[entry_id] = device_id
            signed.append((raw_id, fields))
        return signed, owners, forged

    def _commit(self, src: Source, events: Events, dead: list[Refused], ids: list[Any]) -> Batch:
        if not ids:
            return Batch(0, _empty(self.data))
        z = draws(events.heads, events.seqs)  # fixed by the event ids: shared/holdout.py
        reservoir_draws = (z >> np.uint64(16)).tolist()
        held_out = held_out_draws(z, self.options.holdout_every).tolist()
        heads = sorted(set(events.heads))
        seen_key = self.seen_key
        out: dict[str, Any] = {}

        def txn(pipe: Any) -> None:
            marks = dict(zip(heads, pipe.hmget(seen_key, heads), strict=True)) if heads else {}
            states = {h: Watermark.decode(v) for h, v in marks.items()}
            pairs = zip(events.heads, events.seqs, strict=True)
            keep = [i for i, (head, seq) in enumerate(pairs) if states[head].add(seq)]
            y = self._truths([events.truths[i] for i in keep])
            samples = NewSamples(
                events.X[keep],
                y,
                NewSamples.buckets_of(y, self.data.task),
                [reservoir_draws[i] for i in keep],
                [held_out[i] for i in keep],
                [events.devices[i] for i in keep],
            )
            quarantined = frozenset(replies.text(d) for d in pipe.hkeys(quarantine_key))
            counters = self.data.read_counters(pipe)
            writes = self.data.plan(counters, samples, quarantined)
            flooded = self._over_backlog(pipe, writes)
            pipe.multi()
            if keep:
                pipe.hset(seen_key, mapping={h: s.encode() for h, s in states.items()})
                self.data.add_to(pipe, counters, samples, writes)
            for entry_id, reason, payload in dead:
                self._add_dead_letter(pipe, src.stream, entry_id, reason, payload)
            for i, reason in flooded:
                j = keep[i]
                payload = events.event_ids[j].encode()
                self._add_dead_letter(pipe, src.stream, events.entry_ids[j], reason, payload)
            aside = sum(len(rows) for rows in writes.quarantined.values())
            stats = {
                "accepted": len(keep) - aside - len(flooded),
                "duplicates": len(events) - len(keep),
                "deadlettered": len(dead) + len(flooded),
                "quarantined": aside,
            }
            if self.data.task.is_classification:
                set_aside = {i for rows in writes.quarantined.values() for i in rows}
                classes = Counter(b for i, b in enumerate(samples.buckets) if i not in set_aside)
                stats.update((f"class:{c}", n) for c, n in classes.items())
            self.data.add_stats(pipe, stats)
            pipe.xack(src.stream, src.group, *ids)
            out.update(keep=keep, samples=samples, aside=writes.quarantined, flooded=flooded)

        quarantine_key = self.keys.quarantine(self.options.model)
        self.client.transaction(txn, seen_key, quarantine_key, *self.data.watch_keys)
        refused = dead + [(events.entry_ids[out["keep"][i]], why, b"") for i, why in out["flooded"]]
        aside = {**out["aside"], "": [i for i, _ in out["flooded"]]}
        batch = self._batch(events, out["keep"], out["samples"], refused, ids, aside)
        batch.quarantined -= len(out["flooded"])
        return batch

    def _over_backlog(self, pipe: Any, writes: Writes) -> list[tuple[int, str]]:
        """Drop from ``writes`` the waiting samples of a device beyond
        ``max_device_backlog``; returns them (sample row, reason) for dead letters."""
        limit = self.options.max_device_backlog
        if not limit or not writes.pending:
            return []
        out: list[tuple[int, str]] = []
        for device, rows in writes.pending.items():
            waiting = int(pipe.llen(self.keys.pending(self.options.model, device)))
            room = max(0, limit - waiting)
            if len(rows) > room:
                reason = (
                    f"device {device!r} has {waiting} training samples waiting for admission "
                    f"(max_device_backlog {limit}): its share of rounds is capped"
                )
                out += [(i, reason) for i in rows[room:]]
                writes.pending[device] = rows[:room]
        if out:
            logger.warning("refused %d samples over a device's backlog", len(out))
        return out

    def _truths(self, truths: list[Any]) -> npt.NDArray[Any]:
        """Class indices (int64 ``[N]``) or targets (float32 ``[N, k]``)."""
        if self.data.task.is_classification:
            return np.array(truths, np.int64)
        return np.array(truths, np.float32).reshape(len(truths), self.data.task.width)

    def _add_dead_letter(
        self, pipe: Any, stream: str, entry_id: str, reason: str, payload: bytes
    ) -> None:
        letter = DeadLetter(
            source_stream=stream,
            source_id=entry_id,
            reason=reason,
            payload=payload.decode("utf-8", "replace"),
            consumer=self.options.consumer,
        )
        pipe.xadd(
            self.keys.deadletter,
            {"data": letter.to_wire()},
            maxlen=self.options.deadletter_maxlen,
            approximate=True,
        )

    def _batch(
        self,
        events: Events,
        keep: list[int],
        samples: NewSamples,
        dead: list[Any],
        ids: list[Any],
        aside: dict[str, list[int]] | None = None,
    ) -> Batch:
        served = [events.served[i] for i in keep]
        quarantined = 0
        if aside:  # a quarantined device's samples are kept, not accepted (nor refused ones)
            rows = sorted(set(range(len(samples))) - {i for r in aside.values() for i in r})
            quarantined = len(samples) - len(rows)
            samples, served = samples.subset(rows), [served[i] for i in rows]
        accepted = Accepted(
            X=samples.X,
            y=samples.y,
            served=np.array(served, np.float64),
            holdout=np.array(samples.holdout, bool),
            devices=list(samples.devices or []),
        )
        if keep:
            # Entries arrive in stream order (XREADGROUP and XAUTOCLAIM both), so the
            # range of the batch is its first and last id.
            accepted.first_id, accepted.last_id = replies.text(ids[0]), replies.text(ids[-1])
        return Batch(
            len(ids),
            accepted,
            duplicates=len(events) - len(keep),
            deadlettered=len(dead),
            reasons=[d[1] for d in dead],
            skipped=events.skipped,
            quarantined=quarantined,
        )

    def _count(self, batch: Batch) -> None:
        c = self.counters
        c.accepted += len(batch.accepted)
        c.duplicates += batch.duplicates
        c.deadlettered += batch.deadlettered
        c.skipped += batch.skipped
        if self.data.task.is_classification:
            for label, n in zip(*np.unique(batch.accepted.y, return_counts=True), strict=True):
                c.per_class[int(label)] = c.per_class.get(int(label), 0) + int(n)
        if batch.deadlettered:
            logger.warning(
                "dead-lettered %d feedback entries: %s",
                batch.deadlettered,
                "; ".join(sorted(set(batch.reasons))[:3]),
            )


def _merge(a: Batch, b: Batch) -> Batch:
    """Two consecutive polls' results as one (older first)."""
    if not b.entries:
        return a
    if not a.entries:
        return b
    x, y = a.accepted, b.accepted
    accepted = Accepted(
        np.concatenate([x.X, y.X]),
        np.concatenate([x.y, y.y]),
        np.concatenate([x.served, y.served]),
        np.concatenate([x.holdout, y.holdout]),
        first_id=x.first_id or y.first_id,
        last_id=y.last_id or x.last_id,
        devices=x.devices + y.devices,
    )
    return Batch(
        a.entries + b.entries,
        accepted,
        a.duplicates + b.duplicates,
        a.deadlettered + b.deadlettered,
        a.reasons + b.reasons,
        a.skipped + b.skipped,
        a.quarantined + b.quarantined,
    )


def _empty(data: TrainerData) -> Accepted:
    X, y = data.codec.empty()
    return Accepted(X, y, np.zeros(0, np.float64), np.zeros(0, bool))
