"""Validation of feedback entries: every refusal has a reason for its dead letter.

A stream entry carries events as JSON lines in ``events`` (an edge's batch) or
one event in ``data`` (``shared.keys``). Each event must be a ``FeedbackEvent``
in JSON, no larger than ``max_event_bytes``, of this build's schema version, for
this trainer's model, with a known label, the model's feature count, finite
features (as float32) and an event id ending in a sequence number. A bad event
is refused alone; the other events of its entry are accepted. Each event is
parsed once; the features of a batch are stacked into one array once.

>>> v = FeedbackValidator(model="digits", num_features=2, num_classes=3, max_event_bytes=1000)
>>> ok = b'{"event_id":"pi:e:1","device_id":"pi","model":"digits","x":[1,2],"label":2}'
>>> parsed, refused = v.parse_entries([(b"1-0", {b"events": ok + b"\\n" + ok.replace(b"2}", b"7}")}),
...                                    (b"1-1", {b"other": b"x"})])
>>> [(p.entry_id, p.seq) for p in parsed]
[('1-0', 1)]
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

from shared.errors import MessageError
from shared.keys import FEEDBACK_BATCH_FIELD, FEEDBACK_EVENT_FIELD
from shared.messages import SCHEMA_VERSION, FeedbackEvent

#: Bytes of a refused entry kept in its dead letter.
DEADLETTER_PAYLOAD = 4096

#: (stream entry id, reason, payload) of a refused event or entry.
Refused = tuple[str, str, bytes]

#: A stream entry as redis-py returns it: (id, fields).
Entry = tuple[bytes, dict[bytes, bytes]]

_BATCH = FEEDBACK_BATCH_FIELD.encode()
_EVENT = FEEDBACK_EVENT_FIELD.encode()


@dataclass
class Parsed:
    """A valid event with its idempotency key, parsed once."""

    entry_id: str
    event: FeedbackEvent
    head: str
    seq: int
    raw: bytes


class FeedbackValidator:
    """The checks of one model's feedback."""

    def __init__(
        self, *, model: str, num_features: int, num_classes: int, max_event_bytes: int
    ) -> None:
        self.model = model
        self.num_features = num_features
        self.num_classes = num_classes
        self.max_event_bytes = max_event_bytes

    def parse_entries(self, entries: list[Entry]) -> tuple[list[Parsed], list[Refused]]:
        """The valid events of ``entries`` in stream order, and the refused ones."""
        parsed: list[Parsed] = []
        refused: list[Refused] = []
        for raw_id, fields in entries:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            batch = fields.get(_BATCH)
            if batch is not None:
                payloads = batch.split(b"\n")
            elif _EVENT in fields:
                payloads = [fields[_EVENT]]
            else:
                reason = f"missing field {FEEDBACK_EVENT_FIELD!r} or {FEEDBACK_BATCH_FIELD!r}"
                refused.append((entry_id, reason, payload_of(fields)))
                continue
            for raw in payloads:
                result = self.parse(entry_id, raw)
                if isinstance(result, str):
                    refused.append((entry_id, result, raw[:DEADLETTER_PAYLOAD]))
                else:
                    parsed.append(result)
        return parsed, refused

    def parse(self, entry_id: str, raw: bytes) -> Parsed | str:
        """One event of a stream entry, or the reason to refuse it."""
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
        if not 0 <= ev.label < self.num_classes:
            return f"label {ev.label} is not a class of {self.model!r} (0..{self.num_classes - 1})"
        if len(ev.x) != self.num_features:
            return f"feature count {len(ev.x)}, the model takes {self.num_features}"
        try:
            head, seq = ev.stream_key
        except MessageError as e:
            return f"invalid event_id: {e}"
        if seq < 0:
            return f"invalid event_id {ev.event_id!r}: negative sequence number"
        return Parsed(entry_id, ev, head, seq, raw)

    def features(
        self, parsed: list[Parsed]
    ) -> tuple[npt.NDArray[np.float32], list[Parsed], list[Refused]]:
        """Stack the features once; refuse rows that are not finite as float32."""
        if not parsed:
            return np.zeros((0, self.num_features), np.float32), parsed, []
        with np.errstate(over="ignore", invalid="ignore"):
            X = np.array([p.event.x for p in parsed], dtype=np.float32)
        finite = np.isfinite(X).all(axis=1)
        if finite.all():
            return X, parsed, []
        dead = [
            (
                p.entry_id,
                "non-finite feature values (nan, inf or beyond float32)",
                p.raw[:DEADLETTER_PAYLOAD],
            )
            for p, ok in zip(parsed, finite, strict=True)
            if not ok
        ]
        keep = [p for p, ok in zip(parsed, finite, strict=True) if ok]
        return X[finite], keep, dead


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
