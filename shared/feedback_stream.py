"""Feedback stream entries: the one writer, used by the edge's uplink and by the
API for edges that send feedback over HTTP, and its reader, the trainer's ingest.

An entry holds up to ``batch`` events, one ``FeedbackEvent`` JSON document per
line in the field ``events`` (``FEEDBACK_BATCH_FIELD``): Redis stores, reads,
acks and logs to its AOF one entry instead of hundreds, several times cheaper
per event for Redis and for both ends. Compact JSON has no raw newline, so the
lines split back unambiguously. An entry may also carry a single event in the
field ``data`` (edges before batched entries, tools).

>>> class Pipe:
...     def __init__(self): self.entries = []
...     def xadd(self, stream, fields): self.entries.append(fields)
>>> pipe = Pipe()
>>> add_feedback(pipe, FleetKeys("lab"), [b'{"a":1}', b'{"a":2}', b'{"a":3}'], batch=2)
>>> [events_of({k.encode(): v for k, v in e.items()}) for e in pipe.entries]
[[b'{"a":1}', b'{"a":2}'], [b'{"a":3}']]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.keys import FEEDBACK_BATCH_FIELD, FEEDBACK_EVENT_FIELD, FleetKeys

_BATCH = FEEDBACK_BATCH_FIELD.encode()
_EVENT = FEEDBACK_EVENT_FIELD.encode()


def add_feedback(pipe: Any, keys: FleetKeys, lines: Sequence[bytes], batch: int) -> None:
    """Queue XADDs of ``lines`` (``FeedbackEvent.to_wire()`` each) on ``pipe`` (a
    redis-py pipeline), ``batch`` events an entry; the caller executes it."""
    for i in range(0, len(lines), batch):
        pipe.xadd(keys.feedback, {FEEDBACK_BATCH_FIELD: b"\n".join(lines[i : i + batch])})


def events_of(fields: Mapping[bytes, bytes]) -> list[bytes] | None:
    """The events of a stream entry (JSON documents), or None if it has none."""
    batch = fields.get(_BATCH)
    if batch is not None:
        return batch.split(b"\n")
    single = fields.get(_EVENT)
    return None if single is None else [single]
