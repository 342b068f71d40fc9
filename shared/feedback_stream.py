"""Feedback stream entries: the one writer, used by the edge's uplink and by the
API for edges that send feedback over HTTP, and its reader, the trainer's ingest.

An entry holds up to ``batch`` events: Redis stores, reads, acks and logs to its
AOF one entry instead of hundreds, several times cheaper per event for Redis and
for both ends. Edges send **frames** in the field ``frames``
(``FEEDBACK_FRAMES_FIELD``; ``frame``, ``frame_entries``): each event's JSON
with its sample as raw bytes after it, so that an event for an image or a
window is about the tensor's own size. An entry may instead hold one
``FeedbackEvent`` JSON document per line in the field ``events``
(``FEEDBACK_BATCH_FIELD``; the REST relay, edges before frames; compact JSON has
no raw newline, so the lines split back unambiguously), or a single event in the
field ``data`` (edges before batched entries, tools).

Redis checks each command of a pipeline on its own: one sent as Redis finishes
loading its data after a restart (or leaves an out-of-memory state) can have its
first entries refused and the rest added. A writer that must keep its events in
order (the edge's uplink, which resends a refused batch) therefore adds several
entries in one command, ``ADD_ENTRIES_SCRIPT``, which Redis runs whole or not at all.

>>> class Pipe:
...     def __init__(self): self.entries = []
...     def xadd(self, stream, fields): self.entries.append(fields)
>>> pipe = Pipe()
>>> add_feedback(pipe, FleetKeys("lab"), [b'{"a":1}', b'{"a":2}', b'{"a":3}'], batch=2)
>>> [events_of({k.encode(): v for k, v in e.items()}) for e in pipe.entries]
[[b'{"a":1}', b'{"a":2}'], [b'{"a":3}']]
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from shared.keys import (
    FEEDBACK_BATCH_FIELD,
    FEEDBACK_EVENT_FIELD,
    FEEDBACK_FRAMES_FIELD,
    FleetKeys,
)

_BATCH = FEEDBACK_BATCH_FIELD.encode()
_EVENT = FEEDBACK_EVENT_FIELD.encode()


#: XADD each argument as the events of one entry of the stream KEYS[1], in order.
ADD_ENTRIES_SCRIPT = f"""
for i = 1, #ARGV do
  redis.call('XADD', KEYS[1], '*', '{FEEDBACK_BATCH_FIELD}', ARGV[i])
end
return #ARGV
"""


def feedback_entries(lines: Sequence[bytes], batch: int) -> list[bytes]:
    """The ``events`` values of the entries that hold ``lines``, ``batch`` an entry.

    >>> feedback_entries([b'{"a":1}', b'{"a":2}', b'{"a":3}'], batch=2)
    [b'{"a":1}\\n{"a":2}', b'{"a":3}']
    """
    return [b"\n".join(lines[i : i + batch]) for i in range(0, len(lines), batch)]


def add_feedback(pipe: Any, keys: FleetKeys, lines: Sequence[bytes], batch: int) -> None:
    """Queue XADDs of ``lines`` (``FeedbackEvent.to_wire()`` each) on ``pipe`` (a
    redis-py pipeline), ``batch`` events an entry; the caller executes it."""
    for entry in feedback_entries(lines, batch):
        pipe.xadd(keys.feedback, {FEEDBACK_BATCH_FIELD: entry})


def feedback_stream(keys: FleetKeys, model: str) -> str:
    """The stream an edge sends ``model``'s feedback to: the one place that chooses it.

    The model's own stream, which only its trainers read (cloud/data/ingest.py; they
    also read the fleet-wide ``FleetKeys.feedback`` that older edges write).

    >>> feedback_stream(FleetKeys("lab"), "digits")
    'el:{lab}:feedback:digits'
    """
    return keys.feedback_of(model)


def events_of(fields: Mapping[bytes, bytes]) -> list[bytes] | None:
    """The JSON events of a stream entry (``events`` or ``data``), or None if it has
    none (it may carry ``frames`` instead: ``frames_field``)."""
    batch = fields.get(_BATCH)
    if batch is not None:
        return batch.split(b"\n")
    single = fields.get(_EVENT)
    return None if single is None else [single]


# -- frames: events whose samples travel as raw bytes ------------------------------

#: A frame: the event's JSON length and the sample's byte length (u32 LE each), the
#: event's JSON (``x`` left out, ``x_shape`` and ``x_dtype`` set), the sample's bytes.
_FRAME_HEAD = struct.Struct("<II")
_FRAMES = FEEDBACK_FRAMES_FIELD.encode()


def frame(event_json: bytes, sample: bytes) -> bytes:
    """One event and its sample's raw bytes as a frame.

    >>> frames_of(frame(b'{"a":1}', b"xy") + frame(b'{"a":2}', b""))
    [(b'{"a":1}', b'xy'), (b'{"a":2}', b'')]
    """
    return _FRAME_HEAD.pack(len(event_json), len(sample)) + event_json + sample


def frames_of(blob: bytes) -> list[tuple[bytes, bytes]]:
    """The (event JSON, sample bytes) pairs of concatenated frames.

    Raises ValueError when the blob ends inside a frame (a truncated or foreign field).
    """
    out = []
    at, end, head = 0, len(blob), _FRAME_HEAD.size
    while at < end:
        if at + head > end:
            raise ValueError(f"a frame header is cut off at byte {at} of {end}")
        json_len, data_len = _FRAME_HEAD.unpack_from(blob, at)
        start = at + head
        stop = start + json_len + data_len
        if stop > end:
            raise ValueError(f"a frame of {json_len}+{data_len} bytes at byte {at} runs past {end}")
        out.append((blob[start : start + json_len], blob[start + json_len : stop]))
        at = stop
    return out


#: XADD each argument as the frames of one entry of the stream KEYS[1], in order.
ADD_FRAMES_SCRIPT = ADD_ENTRIES_SCRIPT.replace(
    f"'{FEEDBACK_BATCH_FIELD}'", f"'{FEEDBACK_FRAMES_FIELD}'"
)


def frame_entries(frames: Sequence[bytes], batch: int) -> list[bytes]:
    """The ``frames`` values of the entries that hold ``frames``, ``batch`` an entry.

    >>> [frames_of(e) for e in frame_entries([frame(b"{}", b"a"), frame(b"{}", b"b")], 1)]
    [[(b'{}', b'a')], [(b'{}', b'b')]]
    """
    return [b"".join(frames[i : i + batch]) for i in range(0, len(frames), batch)]


def complete_frames(blob: bytes) -> tuple[list[bytes], int]:
    """The whole frames at the start of ``blob``, each as its bytes, and the bytes left
    over after them (a frame cut off by a power cut mid-write, say).

    >>> complete_frames(frame(b"{}", b"xy") + frame(b"{}", b"z")[:5])
    ([b'\\x02\\x00\\x00\\x00\\x02\\x00\\x00\\x00{}xy'], 5)
    """
    out = []
    at, end, head = 0, len(blob), _FRAME_HEAD.size
    while at + head <= end:
        json_len, data_len = _FRAME_HEAD.unpack_from(blob, at)
        stop = at + head + json_len + data_len
        if stop > end:
            break
        out.append(blob[at:stop])
        at = stop
    return out, end - at


def frames_field(fields: Mapping[bytes, bytes]) -> bytes | None:
    """The frames of a stream entry, or None if it carries none."""
    return fields.get(_FRAMES)
