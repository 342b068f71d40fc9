"""Validation of feedback entries: every refusal has a reason for its dead letter.

A stream entry carries events as JSON lines in ``events`` (an edge's batch),
one event in ``data``, or events whose samples travel as raw bytes in
``frames`` (``shared.feedback_stream``). Each event must be a ``FeedbackEvent``
no larger than ``max_event_bytes`` (a frame's sample is bounded by the input's
own size), of this build's schema version, for this trainer's model, with the
truth the task needs (a class index in range, or one finite target per
output), a sample of the model's input (its shape and dtype, finite float32 or
whole uint8 values) and an event id ending in a sequence number. A bad event is
refused alone; the other events of its entry are accepted. Each event is parsed
once; the samples of each entry are stacked into an array once.

>>> from shared.task import TaskSpec
>>> from shared.tensors import TensorSpec
>>> v = FeedbackValidator(model="digits", input=TensorSpec.flat(2),
...                       task=TaskSpec.classification(["a", "b", "c"]), max_event_bytes=1000)
>>> ok = b'{"event_id":"pi:e:1","device_id":"pi","model":"digits","x":[1,2],"label":2}'
>>> events, refused = v.parse_entries([(b"1-0", {b"events": ok + b"\\n" + ok.replace(b"2}", b"7}")}),
...                                    (b"1-1", {b"other": b"x"})])
>>> events.entry_ids, events.seqs, events.X.tolist()
(['1-0'], [1], [[1.0, 2.0]])
>>> [(entry_id, reason) for entry_id, reason, _ in refused]
[('1-0', "label 7 is not a class of 'digits' (0..2)"), ('1-1', "missing field 'data', 'events' or 'frames'")]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from shared import replies
from shared.errors import InputError, MessageError
from shared.feedback_stream import events_of, frames_field, frames_of
from shared.keys import FEEDBACK_BATCH_FIELD, FEEDBACK_EVENT_FIELD, FEEDBACK_FRAMES_FIELD
from shared.messages import SCHEMA_VERSION, FeedbackEvent
from shared.task import TaskSpec
from shared.tensors import TensorSpec, from_bytes

#: Bytes of a refused entry kept in its dead letter.
DEADLETTER_PAYLOAD = 4096

#: (stream entry id, reason, payload) of a refused event or entry.
Refused = tuple[str, str, bytes]

#: A stream entry as redis-py returns it: (id, fields).
Entry = tuple[bytes, dict[bytes, bytes]]

#: An event that passed parsing: the event, its device stream and seq.
Parsed = tuple[FeedbackEvent, str, int]


class OtherModel(str):
    """The refusal of an event for another model: on the fleet-wide stream, which every
    model's trainers read, it is skipped (and acked with its entry), not dead-lettered."""

    __slots__ = ()


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
    truths: list[Any]  # a class index, or the targets (a list of floats)
    served: list[float]  # the served answer's score: 1/0 right/wrong, or |error|; nan: unknown
    X: npt.NDArray[Any]
    skipped: int = 0  # events of other models, left to their trainers
    devices: list[str] = field(default_factory=list)  # the event's device_id

    def __len__(self) -> int:
        return len(self.seqs)

    def take(self, index: list[int]) -> Events:
        """The events at ``index``, in that order."""
        return Events(
            [self.entry_ids[i] for i in index],
            [self.event_ids[i] for i in index],
            [self.heads[i] for i in index],
            [self.seqs[i] for i in index],
            [self.truths[i] for i in index],
            [self.served[i] for i in index],
            self.X[index],
            self.skipped,
            [self.devices[i] for i in index],
        )


@dataclass
class _Blocks:
    """What parse_entries gathers: the columns, the samples an entry at a time, the raw events."""

    events: Events
    blocks: list[npt.NDArray[Any]] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    skip_other_models: bool = False
    owners: dict[str, str] | None = None  # entry id -> the device that signed it

    def refuse(self, entry_id: str, reason: str, payload: bytes) -> None:
        if self.skip_other_models and isinstance(reason, OtherModel):
            self.events.skipped += 1
        else:
            self.refused.append((entry_id, reason, payload[:DEADLETTER_PAYLOAD]))


class FeedbackValidator:
    """The checks of one model's feedback."""

    def __init__(
        self, *, model: str, input: TensorSpec, task: TaskSpec, max_event_bytes: int
    ) -> None:
        self.model = model
        self.input = input
        self.task = task
        self.max_event_bytes = max_event_bytes
        self._shape = tuple(input.shape)

    def parse_entries(
        self,
        entries: list[Entry],
        skip_other_models: bool = False,
        owners: dict[str, str] | None = None,
    ) -> tuple[Events, list[Refused]]:
        """The valid events of ``entries`` in stream order, and the refused ones; events of
        another model are refused too, or only counted (``Events.skipped``) when
        ``skip_other_models`` (the fleet-wide stream, which carries every model's). With
        ``owners`` (entry id -> the device that signed it), an event of another device
        is refused."""
        empty = np.zeros((0, *self._shape), self.input.np_dtype)
        out = _Blocks(Events([], [], [], [], [], [], empty), skip_other_models=skip_other_models)
        out.owners = owners
        for raw_id, fields in entries:
            entry_id = replies.text(raw_id)
            payloads, frames = events_of(fields), frames_field(fields)
            if payloads is None and frames is None:
                fields_named = f"{FEEDBACK_EVENT_FIELD!r}, {FEEDBACK_BATCH_FIELD!r} or {FEEDBACK_FRAMES_FIELD!r}"
                out.refused.append((entry_id, f"missing field {fields_named}", payload_of(fields)))
                continue
            if payloads is not None:
                self._json_events(entry_id, payloads, out)
            if frames is not None:
                self._framed_events(entry_id, frames, out)
        return self._checked_values(out)

    def _json_events(self, entry_id: str, payloads: list[bytes], out: _Blocks) -> None:
        rows: list[list[float]] = []
        for raw in payloads:
            checked = self.parse(raw)
            if isinstance(checked, str):
                out.refuse(entry_id, checked, raw)
                continue
            ev = checked[0]
            if ev.x is None:
                out.refused.append(
                    (entry_id, "no x: the event carries no sample", raw[:DEADLETTER_PAYLOAD])
                )
                continue
            if len(ev.x) != self.input.size:
                reason = (
                    f"feature count {len(ev.x)}, the model takes {self.input.size} "
                    f"({self.input.describe()})"
                )
                out.refused.append((entry_id, reason, raw[:DEADLETTER_PAYLOAD]))
                continue
            if self._add(entry_id, checked, raw, out):
                rows.append(ev.x)
        if rows:  # stacked entry by entry: the lists of floats die young, in cache
            with np.errstate(over="ignore", invalid="ignore"):
                out.blocks.append(np.array(rows, dtype=np.float32).reshape(-1, *self._shape))

    def _framed_events(self, entry_id: str, blob: bytes, out: _Blocks) -> None:
        try:
            frames = frames_of(blob)
        except ValueError as e:
            out.refused.append((entry_id, f"unreadable frames: {e}", blob[:DEADLETTER_PAYLOAD]))
            return
        samples = []
        for event_json, data in frames:
            checked = self.parse(event_json)
            if isinstance(checked, str):
                out.refuse(entry_id, checked, event_json)
                continue
            sample = self._sample_of(checked[0], data)
            if isinstance(sample, str):
                out.refused.append((entry_id, sample, event_json[:DEADLETTER_PAYLOAD]))
                continue
            if self._add(entry_id, checked, event_json, out):
                samples.append(sample)
        if samples:
            out.blocks.append(np.stack(samples))

    def _sample_of(self, ev: FeedbackEvent, data: bytes) -> npt.NDArray[Any] | str:
        """The frame's sample, or why it does not fit the model's input."""
        shape, dtype = ev.x_shape, ev.x_dtype
        if shape is None or dtype is None:
            return "a framed event needs x_shape and x_dtype"
        if tuple(shape) != self._shape or dtype != self.input.dtype:
            return f"sample shape {list(shape)} {dtype}, the model takes {self.input.describe()}"
        try:
            return from_bytes(data, self.input)
        except InputError as e:
            return str(e)

    def _add(self, entry_id: str, checked: Parsed, raw: bytes, out: _Blocks) -> bool:
        ev, head, seq = checked
        owner = out.owners.get(entry_id) if out.owners is not None else None
        if out.owners is not None and (owner != ev.device_id or not head.startswith(f"{owner}:")):
            reason = f"event of device {ev.device_id!r} in an entry signed by device {owner!r}"
            out.refused.append((entry_id, reason, raw[:DEADLETTER_PAYLOAD]))
            return False
        e = out.events
        e.entry_ids.append(entry_id)
        e.event_ids.append(ev.event_id)
        e.heads.append(head)
        e.devices.append(ev.device_id)
        e.seqs.append(seq)
        e.truths.append(ev.label if self.task.is_classification else ev.target)
        e.served.append(self._served(ev))
        out.raws.append(raw)
        return True

    def _served(self, ev: FeedbackEvent) -> float:
        """How well the served answer did: 1.0/0.0 for the class, or the mean |error| of the
        outputs; nan when the event does not say what was served."""
        if self.task.is_classification:
            p = ev.predicted
            return float(p == ev.label) if p is not None and 0 <= p < self.task.width else math.nan
        served, target = ev.predicted_outputs, ev.target
        if served is None or target is None or len(served) != len(target):
            return math.nan
        error = sum(abs(a - b) for a, b in zip(served, target, strict=True)) / len(target)
        return error if math.isfinite(error) else math.nan

    def parse(self, raw: bytes) -> Parsed | str:
        """One event of a stream entry with its device stream and seq, or the reason
        to refuse it (the sample is the caller's: JSON values or a frame's bytes)."""
        if len(raw) > self.max_event_bytes:
            return f"oversize: {len(raw)} bytes, the limit is {self.max_event_bytes}"
        try:
            ev = FeedbackEvent.model_validate_json(raw)
        except ValidationError as e:
            return why_invalid(raw, e)
        if ev.schema_version != SCHEMA_VERSION:
            return f"schema_version {ev.schema_version} is not supported (this trainer speaks {SCHEMA_VERSION})"
        if ev.model != self.model:
            return OtherModel(f"wrong model {ev.model!r}: this trainer trains {self.model!r}")
        wrong = self._wrong_truth(ev)
        if wrong:
            return wrong
        if ev.x is not None and ev.x_shape is not None and tuple(ev.x_shape) != self._shape:
            return f"sample shape {ev.x_shape}, the model takes {self.input.describe()}"
        try:
            head, seq = ev.stream_key
        except MessageError as e:
            return f"invalid event_id: {e}"
        if not 0 <= seq < 2**63:
            return f"invalid event_id {ev.event_id!r}: sequence number not in 0..2**63-1"
        return ev, head, seq

    def _wrong_truth(self, ev: FeedbackEvent) -> str | None:
        task = self.task
        if task.is_classification:
            if ev.label is None:
                return f"no label: {self.model!r} is a classifier"
            if not 0 <= ev.label < task.width:
                return f"label {ev.label} is not a class of {self.model!r} (0..{task.width - 1})"
            return None
        if ev.target is None:
            return f"no target: {self.model!r} is a regressor (outputs {', '.join(task.outputs)})"
        if len(ev.target) != task.width:
            return f"target has {len(ev.target)} values, {self.model!r} has {task.width} outputs"
        if not all(math.isfinite(v) for v in ev.target):
            return "non-finite target values (nan or inf)"
        return None

    def _checked_values(self, out: _Blocks) -> tuple[Events, list[Refused]]:
        """The events whose sample values fit the input (finite float32; whole 0..255 for
        uint8), and the others refused."""
        valid = out.events
        if out.blocks:
            valid.X = np.concatenate(out.blocks)
        if self.input.dtype == "uint8":
            values = valid.X.reshape(len(valid.X), self.input.size)
            good = ((values >= 0) & (values <= 255) & (values == np.round(values))).all(axis=1)
            reason = "x values must be whole numbers 0..255 for a uint8 input"
        else:
            good = np.isfinite(valid.X.reshape(len(valid.X), self.input.size)).all(axis=1)
            reason = "non-finite feature values (nan, inf or beyond float32)"
        if not good.all():
            bad = np.flatnonzero(~good).tolist()
            out.refused += [
                (valid.entry_ids[i], reason, out.raws[i][:DEADLETTER_PAYLOAD]) for i in bad
            ]
            valid = valid.take(np.flatnonzero(good).tolist())
        if valid.X.dtype != self.input.np_dtype:
            valid.X = valid.X.astype(self.input.np_dtype)
        return valid, out.refused


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
