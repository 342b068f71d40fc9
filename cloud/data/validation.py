"""Validation of feedback entries: every refusal has a reason for its dead letter.

A stream entry carries events as JSON lines in ``events`` (an edge's batch) or
one event in ``data`` (``shared.keys``). Each event must be a ``FeedbackEvent``
in JSON, no larger than ``max_event_bytes``, of this build's schema version, for
this trainer's model, with a known label, the model's feature count, finite
features (as float32) and an event id ending in a sequence number. A bad event
is refused alone; the other events of its entry are accepted. Each event is
parsed once; the features of each entry are stacked into an array once.

>>> v = FeedbackValidator(model="digits", num_features=2, num_classes=3, max_event_bytes=1000)
>>> ok = b'{"event_id":"pi:e:1","device_id":"pi","model":"digits","x":[1,2],"label":2}'
>>> events, refused = v.parse_entries([(b"1-0", {b"events": ok + b"\\n" + ok.replace(b"2}", b"7}")}),
...                                    (b"1-1", {b"other": b"x"})])
>>> events.entry_ids, events.seqs, events.X.tolist()
(['1-0'], [1], [[1.0, 2.0]])
>>> [(entry_id, reason) for entry_id, reason, _ in refused]
[('1-0', "label 7 is not a class of 'digits' (0..2)"), ('1-1', "missing field 'data' or 'events'")]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from shared import replies
from shared.errors import MessageError
from shared.feedback_stream import events_of
from shared.keys import FEEDBACK_BATCH_FIELD, FEEDBACK_EVENT_FIELD
from shared.messages import SCHEMA_VERSION, FeedbackEvent

#: Bytes of a refused entry kept in its dead letter.
DEADLETTER_PAYLOAD = 4096

#: (stream entry id, reason, payload) of a refused event or entry.
Refused = tuple[str, str, bytes]

#: A stream entry as redis-py returns it: (id, fields).
Entry = tuple[bytes, dict[bytes, bytes]]


@dataclass
class Events:
    """Valid events as columns, in stream order: what acceptance needs of them.

    Columns rather than an object per event, like ``replay.NewSamples``: a read
    holds a thousand events, and every object kept alive until it is accepted
    is work for the garbage collector (a third of the parsing time, kept whole).
    """

    entry_ids: list[str]
    event_ids: list[str]
    heads: list[str]  # the device stream of the event id, <device>:<epoch>
    seqs: list[int]
    labels: list[int]
    predicted: list[int]  # -1 where the event carries no prediction of a known class
    X: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.seqs)

    def take(self, index: list[int]) -> Events:
        """The events at ``index``, in that order."""
        return Events(
            [self.entry_ids[i] for i in index],
            [self.event_ids[i] for i in index],
            [self.heads[i] for i in index],
            [self.seqs[i] for i in index],
            [self.labels[i] for i in index],
            [self.predicted[i] for i in index],
            self.X[index],
        )


class FeedbackValidator:
    """The checks of one model's feedback."""

    def __init__(
        self, *, model: str, num_features: int, num_classes: int, max_event_bytes: int
    ) -> None:
        self.model = model
        self.num_features = num_features
        self.num_classes = num_classes
        self.max_event_bytes = max_event_bytes

    def parse_entries(self, entries: list[Entry]) -> tuple[Events, list[Refused]]:
        """The valid events of ``entries`` in stream order, and the refused ones."""
        valid = Events([], [], [], [], [], [], np.zeros((0, self.num_features), np.float32))
        blocks: list[npt.NDArray[np.float32]] = []  # the features, an array per entry
        raws: list[bytes] = []
        refused: list[Refused] = []
        for raw_id, fields in entries:
            entry_id = replies.text(raw_id)
            payloads = events_of(fields)
            if payloads is None:
                reason = f"missing field {FEEDBACK_EVENT_FIELD!r} or {FEEDBACK_BATCH_FIELD!r}"
                refused.append((entry_id, reason, payload_of(fields)))
                continue
            rows: list[list[float]] = []
            for raw in payloads:
                checked = self.parse(raw)
                if isinstance(checked, str):
                    refused.append((entry_id, checked, raw[:DEADLETTER_PAYLOAD]))
                    continue
                ev, head, seq = checked
                valid.entry_ids.append(entry_id)
                valid.event_ids.append(ev.event_id)
                valid.heads.append(head)
                valid.seqs.append(seq)
                assert ev.label is not None and ev.x is not None  # parse checked both
                valid.labels.append(ev.label)
                p = ev.predicted
                valid.predicted.append(p if p is not None and 0 <= p < self.num_classes else -1)
                rows.append(ev.x)
                raws.append(raw)
            if rows:  # stacked entry by entry: the lists of floats die young, in cache
                with np.errstate(over="ignore", invalid="ignore"):
                    blocks.append(np.array(rows, dtype=np.float32))
        if blocks:
            valid.X = np.concatenate(blocks)
        events, nonfinite = self._finite(valid, raws)
        return events, refused + nonfinite

    def parse(self, raw: bytes) -> tuple[FeedbackEvent, str, int] | str:
        """One event of a stream entry with its device stream and seq, or the reason
        to refuse it."""
        if len(raw) > self.max_event_bytes:
            return f"oversize: {len(raw)} bytes, the limit is {self.max_event_bytes}"
        try:
            ev = FeedbackEvent.model_validate_json(raw)
        except ValidationError as e:
            return why_invalid(raw, e)
        if ev.schema_version != SCHEMA_VERSION:
            return f"schema_version {ev.schema_version} is not supported (this trainer speaks {SCHEMA_VERSION})"
        if ev.model != self.model:
            return f"wrong model {ev.model!r}: this trainer trains {self.model!r}"
        if ev.label is None:
            return f"no label: {self.model!r} is a classifier"
        if not 0 <= ev.label < self.num_classes:
            return f"label {ev.label} is not a class of {self.model!r} (0..{self.num_classes - 1})"
        if ev.x is None:
            return "no x: the event carries no sample"
        if len(ev.x) != self.num_features:
            return f"feature count {len(ev.x)}, the model takes {self.num_features}"
        try:
            head, seq = ev.stream_key
        except MessageError as e:
            return f"invalid event_id: {e}"
        if not 0 <= seq < 2**63:
            return f"invalid event_id {ev.event_id!r}: sequence number not in 0..2**63-1"
        return ev, head, seq

    def _finite(self, valid: Events, raws: list[bytes]) -> tuple[Events, list[Refused]]:
        """``valid`` without the events whose features are not finite as float32,
        and those refused."""
        finite = np.isfinite(valid.X).all(axis=1)
        if finite.all():
            return valid, []
        reason = "non-finite feature values (nan, inf or beyond float32)"
        bad = np.flatnonzero(~finite).tolist()
        refused = [(valid.entry_ids[i], reason, raws[i][:DEADLETTER_PAYLOAD]) for i in bad]
        return valid.take(np.flatnonzero(finite).tolist()), refused


def payload_of(fields: dict[bytes, bytes]) -> bytes:
    """An entry without events, as JSON for its dead letter."""
    raw = json.dumps(
        {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in fields.items()}
    ).encode()
    return raw[:DEADLETTER_PAYLOAD]


def why_invalid(raw: bytes, e: ValidationError) -> str:
    """The dead-letter reason for an event pydantic refused, most useful first."""
    err = e.errors()[0]
    if err.get("type") == "json_invalid":
        return f"not JSON: {err.get('msg', '')}"
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict):
        version = obj.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION and not (isinstance(version, float) and math.isnan(version)):
            return f"schema_version {version!r} is not supported (this trainer speaks {SCHEMA_VERSION})"
    where = ".".join(str(p) for p in err.get("loc", ())) or "body"
    return f"invalid: {where}: {err.get('msg', 'invalid')}"
