"""What an edge that cannot reach Redis sends over HTTP, written where an edge writes it.

- a status report: ``shared.status_report.add_status``, as ``StatusReporter``, and in the
  same MULTI/EXEC its counting in the fleet's figures (``cloud.registry.fleet_counts``);
- feedback: in the entry format of ``shared.feedback_stream`` (``FeedbackUplink``'s),
  on the stream of each event's model (``FleetKeys.feedback_of``), so that model's
  trainers' ingest, deduplication and dead letters treat it as any edge's.

A sample arrives as JSON, nested lists in the model's input shape or a flat list of its
values. With a published version of the model, the relay checks it against the input
of the newest manifest (``shared.tensors.as_batch``: a 422 names the expected shape)
and writes it as the edges do: a flat float vector as a JSON line, any other input
(a window, an image, uint8) as a frame of raw bytes (``shared.feedback_stream.frame``),
about the tensor's own size on the stream. Before the model's first version, samples
are flattened into JSON lines, and the trainer judges their size.

Entries an edge made itself (``shared.signed_relay``: the frames it would XADD, with its
device signature) are written unchanged, to the model's stream, and a signed status report
to the keys an enrolled edge writes (``shared.status_report.add_report``): the API
carries a device's signature and never makes one, so the trainer and the rollout gates
check it as they check a Redis edge's.

The relay refuses at once what the API can judge (another fleet, an unknown
schema version, a malformed event id, non-finite features); everything else
(feature count, label range) is the trainer's, which dead-letters an
event with the reason as it does any edge's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from cloud.api.schemas import FeedbackAcceptedPublic
from cloud.registry.fleet_counts import FleetCounts
from shared import replies
from shared.device_identity import DEVICE_FIELD, SIG_FIELD
from shared.errors import InputError, MessageError
from shared.feedback_stream import feedback_entries, frame, frames_of
from shared.keys import FEEDBACK_BATCH_FIELD, FEEDBACK_FRAMES_FIELD, FleetKeys, check_name
from shared.messages import SCHEMA_VERSION, EdgeStatus, FeedbackEvent, SignedManifest
from shared.signed_relay import RelayedEntry, RelayedFeedback, RelayedStatus
from shared.status_report import add_report, add_status
from shared.tensors import TensorSpec, as_batch, to_bytes

#: Input specs of manifests read, by sha256 (a version never changes).
_SPECS_KEPT = 256


class DeviceRelay:
    """Writes one fleet's status reports and feedback on its edges' behalf."""

    def __init__(
        self, client: redis.Redis, keys: FleetKeys, counts: FleetCounts | None = None
    ) -> None:
        self.client = client
        self.keys = keys
        #: The fleet's counts, updated in the transaction of each status report.
        self.counts = counts if counts is not None else FleetCounts(client, keys)
        self._specs: dict[str, TensorSpec] = {}

    @property
    def fleet(self) -> str:
        return self.keys.fleet

    def write_status(self, status: EdgeStatus, ttl_s: int, maxlen: int) -> None:
        self._check_status(status)
        pipe = self.client.pipeline(transaction=True)  # the report and its counting are one
        add_status(pipe, self.keys, status, ttl_s, maxlen)
        self.counts.queue_report(pipe, status, ttl_s)
        pipe.execute()

    def _check_status(self, status: EdgeStatus) -> None:
        if status.fleet != self.fleet:
            raise InputError(
                f"status is for fleet {status.fleet!r}; this API serves {self.fleet!r}"
            )
        _check_version(status.schema_version, "EdgeStatus")
        try:
            check_name("model", status.model)
        except ValueError as e:
            raise InputError(str(e)) from e

    def write_signed_status(self, report: RelayedStatus, ttl_s: int, maxlen: int) -> EdgeStatus:
        """Write an edge's signed report as it would itself: its exact bytes and signature."""
        _check_version(report.schema_version, "RelayedStatus")
        try:
            status = EdgeStatus.from_wire(report.payload)
        except MessageError as e:
            raise InputError(f"payload is not an EdgeStatus: {e}") from e
        if status.device_id != report.device:
            raise InputError(
                f"the report is device {status.device_id!r}'s, but signed as {report.device!r}"
            )
        self._check_status(status)
        pipe = self.client.pipeline(transaction=True)
        add_report(pipe, self.keys, status, report.payload, report.sig, ttl_s, maxlen)
        self.counts.queue_report(pipe, status, ttl_s)
        pipe.execute()
        return status

    def append_entries(self, model: str, body: RelayedFeedback) -> list[str]:
        """XADD an edge's own entries to ``model``'s stream unchanged, in order, all or
        none; their entry ids."""
        _check_version(body.schema_version, "RelayedFeedback")
        stream = self.keys.feedback_of(model)
        pipe = self.client.pipeline(transaction=True)
        for entry in body.entries:
            fields: dict[str, bytes] = {entry.field: entry.payload}
            if entry.device is not None and entry.sig is not None:
                fields.update({DEVICE_FIELD: entry.device.encode(), SIG_FIELD: entry.sig})
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        return [replies.text(i) for i in pipe.execute()]

    def append_feedback(
        self, events: Sequence[FeedbackEvent], batch: int, model: str | None = None
    ) -> FeedbackAcceptedPublic:
        """Append ``events`` to their models' streams (all of them ``model``'s, when given)."""
        by_model: dict[str, list[FeedbackEvent]] = {}
        for e in events:
            _check_event(e, model)
            by_model.setdefault(e.model, []).append(e)
        entries: list[tuple[str, dict[str, bytes]]] = []
        for name, group in by_model.items():
            entries += self._entries(name, group, batch)
        pipe = self.client.pipeline(transaction=True)  # a request's events land whole or not at all
        for stream, fields in entries:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        ids = [replies.text(i) for i in pipe.execute()]
        return FeedbackAcceptedPublic(accepted=len(events), entries=ids)

    def _entries(
        self, model: str, events: list[FeedbackEvent], batch: int
    ) -> list[tuple[str, dict[str, bytes]]]:
        """The stream entries of one model's events: JSON lines, and frames for tensors."""
        spec = self.input_of(model)
        lines: list[bytes] = []
        frames: list[bytes] = []
        for e in events:
            if spec is None or (len(spec.shape) == 1 and spec.dtype == "float32"):
                lines.append(_flat(e, spec).to_wire())
            else:
                frames.append(_framed(e, spec))
        stream = self.keys.feedback_of(model)
        out = [(stream, {FEEDBACK_BATCH_FIELD: entry}) for entry in feedback_entries(lines, batch)]
        for i in range(0, len(frames), batch):
            out.append((stream, {FEEDBACK_FRAMES_FIELD: b"".join(frames[i : i + batch])}))
        return out

    def input_of(self, model: str) -> TensorSpec | None:
        """The input of ``model``'s newest version, or None before its first."""
        newest = self.client.zrevrange(self.keys.versions(model), 0, 0)
        if not newest:
            return None
        sha = replies.text(newest[0])
        if sha not in self._specs:
            raw = self.client.get(self.keys.manifest(sha))
            if raw is None:
                return None
            try:
                spec = SignedManifest.from_wire(raw).manifest().input_spec
            except MessageError:
                return None
            if len(self._specs) >= _SPECS_KEPT:
                self._specs.clear()
            self._specs[sha] = spec
        return self._specs[sha]


def entry_devices(entry: RelayedEntry) -> set[str]:
    """The ``device_id`` of every event in an unsigned entry, so that a device token's
    unsigned entries hold its own events only; InputError when they do not parse."""
    try:
        if entry.field == "frames":
            heads = [head for head, _ in frames_of(entry.payload)]
        else:
            heads = entry.payload.split(b"\n")
        devices = {FeedbackEvent.from_wire(head).device_id for head in heads}
    except (ValueError, MessageError) as e:
        raise InputError(f"an unsigned entry's {entry.field} do not parse: {e}") from e
    return devices


def _sample(e: FeedbackEvent, spec: TensorSpec) -> npt.NDArray[Any]:
    """The event's one sample in ``spec``'s shape and dtype, or a 422 naming them."""
    try:
        batch, single = as_batch(e.x, spec)
    except InputError as err:
        raise InputError(f"event {e.event_id}: {err}") from err
    if not single:
        raise InputError(
            f"event {e.event_id}: x holds {len(batch)} samples; an event has one of shape "
            f"{list(spec.shape)}"
        )
    sample: npt.NDArray[Any] = batch[0]
    return sample


def _flat(e: FeedbackEvent, spec: TensorSpec | None) -> FeedbackEvent:
    """The event with ``x`` a flat list of floats (what the JSON lines carry): the client's
    own values, so that the line is the one an edge would have sent."""
    if spec is not None:
        _sample(e, spec)  # the shape and finite values
    try:
        values = np.asarray(e.x, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise InputError(f"event {e.event_id}: x must be numbers, as lists: {err}") from err
    if not np.isfinite(values).all():
        raise InputError(f"event {e.event_id}: x holds a NaN or infinite value")
    return FeedbackEvent.model_validate({**e.model_dump(), "x": values.tolist()})


def _framed(e: FeedbackEvent, spec: TensorSpec) -> bytes:
    """The event as a frame: its JSON without ``x``, then the sample's raw bytes."""
    sample = _sample(e, spec)
    head = FeedbackEvent.model_validate(
        {**e.model_dump(), "x": None, "x_shape": list(spec.shape), "x_dtype": spec.dtype}
    )
    return frame(head.to_wire(), to_bytes(sample))


def _check_version(version: int, what: str) -> None:
    if version != SCHEMA_VERSION:
        raise InputError(
            f"{what} schema_version {version} is not supported (this API speaks {SCHEMA_VERSION})"
        )


def _check_event(e: FeedbackEvent, model: str | None) -> None:
    """What the API can refuse at once; the rest (feature count, label range) is the
    trainer's, which dead-letters an event with the reason as it does any edge's."""
    _check_version(e.schema_version, "FeedbackEvent")
    if model is not None and e.model != model:
        raise InputError(
            f"event {e.event_id}: model {e.model!r}, but it was posted to {model!r}'s feedback"
        )
    try:
        check_name("model", e.model)
    except ValueError as err:
        raise InputError(f"event {e.event_id}: {err}") from err
    head, _, seq = e.event_id.rpartition(":")
    if not head.startswith(e.device_id + ":") or not seq.isdigit():
        raise InputError(
            f"event_id {e.event_id!r} must be '<device_id>:<epoch>:<seq>' for device "
            f"{e.device_id!r} (seq a number): it is the event's idempotency key"
        )
    if not e.x:
        raise InputError(f"event {e.event_id}: x is missing or empty")
    if (e.label is None) == (e.target is None):
        raise InputError(f"event {e.event_id}: give the truth as label or as target, not both")
