"""What an edge that cannot reach Redis sends over HTTP, written where an edge writes it.

- a status report: ``shared.status_report.add_status``, as ``StatusReporter``;
- feedback: in the entry format of ``shared.feedback_stream`` (``FeedbackUplink``'s),
  on the stream of each event's model (``FleetKeys.feedback_of``), so that model's
  trainers' ingest, deduplication and dead letters treat it as any edge's.

Samples over HTTP stay JSON lists (``FeedbackEvent.x``, flat): the trainer reads a
flat list of a tensor input's size in the input's shape. Frames (the raw bytes edges
send for tensors) would need the model's input spec here; the relay does not read
manifests, and HTTP feedback is the fallback path of edges that cannot reach Redis.

The relay refuses at once what the API can judge (another fleet, an unknown
schema version, a malformed event id, non-finite features); everything else
(feature count, label range) is the trainer's, which dead-letters an
event with the reason as it does any edge's.
"""

from __future__ import annotations

import math

import redis

from cloud.api.schemas import FeedbackAcceptedPublic
from shared import replies
from shared.errors import InputError
from shared.feedback_stream import feedback_entries
from shared.keys import FEEDBACK_BATCH_FIELD, FleetKeys, check_name
from shared.messages import SCHEMA_VERSION, EdgeStatus, FeedbackEvent
from shared.status_report import add_status


class DeviceRelay:
    """Writes one fleet's status reports and feedback on its edges' behalf."""

    def __init__(self, client: redis.Redis, keys: FleetKeys) -> None:
        self.client = client
        self.keys = keys

    @property
    def fleet(self) -> str:
        return self.keys.fleet

    def write_status(self, status: EdgeStatus, ttl_s: int, maxlen: int) -> None:
        if status.fleet != self.fleet:
            raise InputError(
                f"status is for fleet {status.fleet!r}; this API serves {self.fleet!r}"
            )
        _check_version(status.schema_version, "EdgeStatus")
        try:
            check_name("model", status.model)
        except ValueError as e:
            raise InputError(str(e)) from e
        pipe = self.client.pipeline(transaction=False)
        add_status(pipe, self.keys, status, ttl_s, maxlen)
        pipe.execute()

    def append_feedback(
        self, events: list[FeedbackEvent], batch: int, model: str | None = None
    ) -> FeedbackAcceptedPublic:
        """Append ``events`` to their models' streams (all of them ``model``'s, when given)."""
        by_model: dict[str, list[bytes]] = {}
        for e in events:
            _check_event(e, model)
            by_model.setdefault(e.model, []).append(e.to_wire())
        pipe = self.client.pipeline(transaction=True)  # a request's events land whole or not at all
        for name, lines in by_model.items():
            stream = self.keys.feedback_of(name)
            for entry in feedback_entries(lines, batch):
                pipe.xadd(stream, {FEEDBACK_BATCH_FIELD: entry})
        ids = [replies.text(i) for i in pipe.execute()]
        return FeedbackAcceptedPublic(accepted=len(events), entries=ids)


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
    if not all(math.isfinite(v) for v in e.x):
        raise InputError(f"event {e.event_id}: x holds a NaN or infinite value")
    if (e.label is None) == (e.target is None):
        raise InputError(f"event {e.event_id}: give the truth as label or as target, not both")
