"""``/v1/models/{model}/feedback`` and ``/v1/feedback``: labeled feedback over HTTP, for
edges that cannot reach Redis. Each event goes to its model's feedback stream."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, status
from pydantic import Discriminator, Tag

from cloud.api.auth import PrincipalDep, check_device
from cloud.api.deps import ModelName, RelayDep, SettingsDep
from cloud.api.errors import error
from cloud.api.relay import entry_devices
from cloud.api.schemas import (
    FeedbackAcceptedPublic,
    FeedbackBatch,
    FeedbackEntriesPublic,
    FeedbackEventCreate,
)
from shared.signed_relay import RelayedFeedback

router = APIRouter(tags=["feedback"])


def _shape(value: Any) -> str:
    # An object with "events" is a batch: its errors then name the batch's fields, not an event's.
    return "batch" if isinstance(value, dict) and "events" in value else "event"


FeedbackBody = Annotated[
    Annotated[FeedbackEventCreate, Tag("event")] | Annotated[FeedbackBatch, Tag("batch")],
    Discriminator(_shape),
]

_EXAMPLE = {
    "event_id": "pi-07:3f9a1c:42",
    "device_id": "pi-07",
    "model": "digits",
    "x": [0.0] * 64,
    "label": 3,
    "predicted": 3,
    "model_version": 4,
}


_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: error(
        "Malformed event", "event_id 'x' must be '<device_id>:<epoch>:<seq>' for device 'pi-07'"
    )
}
_BODY = {
    "requestBody": {
        "content": {
            "application/json": {
                "examples": {
                    "one": {"summary": "one event", "value": _EXAMPLE},
                    "batch": {"summary": "a batch", "value": {"events": [_EXAMPLE]}},
                }
            }
        }
    }
}


@router.post(
    "/v1/models/{model}/feedback",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send labeled feedback for a model",
    responses=_RESPONSES,
    openapi_extra=_BODY,
)
def create_model_feedback(
    model: ModelName, body: FeedbackBody, relay: RelayDep, settings: SettingsDep, who: PrincipalDep
) -> FeedbackAcceptedPublic:
    """One ``FeedbackEvent`` or ``{"events": [...]}`` of ``model``, appended to the model's
    feedback stream in the entry format the edge uplink uses, so its trainers accept,
    deduplicate (by ``event_id`` = ``<device>:<epoch>:<seq>``) and dead-letter it exactly as
    an edge's. An event of another model is a 422. A device token posts events of its own
    device only."""
    events = body.events if isinstance(body, FeedbackBatch) else [body]
    for device in sorted({e.device_id for e in events}):
        check_device(who, device)
    return relay.append_feedback(events, settings.feedback_batch, model)


@router.post(
    "/v1/feedback",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send labeled feedback",
    responses=_RESPONSES,
    openapi_extra=_BODY,
)
def create_feedback(
    body: FeedbackBody, relay: RelayDep, settings: SettingsDep, who: PrincipalDep
) -> FeedbackAcceptedPublic:
    """One ``FeedbackEvent`` or ``{"events": [...]}``, each event appended to its model's
    feedback stream (as ``/v1/models/{model}/feedback``) in the entry format the edge uplink uses, so the trainers accept, deduplicate (by ``event_id``
    = ``<device>:<epoch>:<seq>``) and dead-letter it exactly as an edge's. A device token posts
    events of its own device only."""
    events = body.events if isinstance(body, FeedbackBatch) else [body]
    for device in sorted({e.device_id for e in events}):
        check_device(who, device)
    return relay.append_feedback(events, settings.feedback_batch)


@router.post(
    "/v1/models/{model}/feedback/entries",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Relay an edge's own feedback stream entries (signed by the device)",
    responses={
        403: error("Another device's entry", "this token may post for device 'pi-07' only"),
        422: error("Malformed entries", "sig must be 64 bytes, not 12"),
    },
)
def create_feedback_entries(
    model: ModelName, body: RelayedFeedback, relay: RelayDep, who: PrincipalDep
) -> FeedbackEntriesPublic:
    """Stream entries exactly as an edge would XADD them to ``model``'s feedback stream
    (``frames`` or ``events``, base64) with, from an enrolled device, its id and signature:
    appended unchanged, in order, all or none. The API does not check or make signatures:
    the trainer accepts an entry only if it verifies with the enrolled device's key. Each
    signed entry's device must be the token's (403); an unsigned entry's events must all be
    of the token's device (403), as on ``/v1/feedback``."""
    for entry in body.entries:
        devices = {entry.device} if entry.device is not None else entry_devices(entry)
        for device in sorted(devices):
            check_device(who, device)
    return FeedbackEntriesPublic(entries=relay.append_entries(model, body))
