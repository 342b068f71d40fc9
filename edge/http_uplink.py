"""Feedback and status through the cloud API, for an edge with ``uplink = "http"``.

The entries are the ones the edge would XADD to Redis (``shared.feedback_stream``
frames, ``batch`` events an entry) and an enrolled device signs each exactly as over
Redis (``shared.device_identity``); the API relays them unchanged
(``POST /v1/models/{model}/feedback/entries``, ``POST /v1/devices/{id}/status/signed``),
so the trainer and the rollout gates verify them as any edge's. An edge without a device
key sends unsigned entries (accepted only by a fleet without enrolled devices) and its
status to the JSON relay.

What an answer means for the uplink's spool (``edge.uplink``):

- 2xx: delivered; the spool's copy may go.
- no answer, a timeout, a 5xx, and 401/403/408/429 (the token, not the events: a renewed
  token delivers them): ``SinkDown``, the events stay spooled and are retried with backoff.
- any other 4xx (400, 413, 422: the events themselves): a ``Refusal`` with the API's
  reason; the uplink keeps those events in ``state_dir/refused`` and goes on.

A batch goes in requests of at most ``max_request_bytes`` of entries (under the API's
body cap) sent in order; entries are cut at that size too. A request's entries are
appended whole or not at all; when a later request of a batch fails, the whole batch is
resent and the trainer drops the duplicates by event id (at-least-once, as over Redis).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from edge.fleet_api import ApiUnreachable, FleetApi, detail
from edge.uplink import Refusal, SinkDown
from shared.device_identity import FEEDBACK, STATUS, DeviceSigner
from shared.keys import check_name
from shared.messages import EdgeStatus
from shared.signed_relay import MAX_ENTRIES, RelayedEntry, RelayedFeedback, RelayedStatus

logger = logging.getLogger(__name__)

#: Entry bytes per request: base64 makes a third more, well under the API's 8 MiB cap.
MAX_REQUEST_BYTES = 2 * 1024 * 1024
#: Statuses that say the credential is wrong, or the API is busy: retry, keep the events.
RETRY_STATUSES = frozenset({401, 403, 408, 429})


class HttpSink:
    """The uplink's ``EntrySink`` through the cloud API's entry relay."""

    name = "the API"

    def __init__(
        self,
        api: FleetApi,
        model: str,
        signer: DeviceSigner | None,
        batch: int,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        self._api, self._signer = api, signer
        self._path = f"/v1/models/{check_name('model', model)}/feedback/entries"
        self._batch, self._max = batch, max_request_bytes
        self.requests = 0
        self.refused_requests = 0  # any 4xx, retried or not

    def add(self, lines: list[bytes]) -> list[Refusal]:
        refusals: list[Refusal] = []
        for request in self._requests(lines):
            entries = [self._entry(b"".join(entry)) for entry in request]
            body = RelayedFeedback(entries=entries).model_dump_json().encode()
            try:
                status, answer = self._api.post(self._path, body)
            except ApiUnreachable as e:
                raise SinkDown(str(e)) from e
            self.requests += 1
            if 200 <= status < 300:
                continue
            self.refused_requests += 1
            why = f"POST {self._path}: HTTP {status} {detail(answer)}".rstrip()
            if status in RETRY_STATUSES or status < 400:
                raise SinkDown(why)
            refusals.append(Refusal([line for entry in request for line in entry], why))
        return refusals

    def _entry(self, payload: bytes) -> RelayedEntry:
        if self._signer is None:
            return RelayedEntry(payload=payload)
        return RelayedEntry(
            payload=payload,
            device=self._signer.device_id,
            sig=self._signer.sign(FEEDBACK, payload),
        )

    def _requests(self, lines: list[bytes]) -> Iterator[list[list[bytes]]]:
        """The lines as entries (``batch`` events, at most ``max`` bytes each but for a
        single larger event), grouped into requests of at most ``max`` bytes."""
        entries: list[list[bytes]] = []
        entry: list[bytes] = []
        size = 0
        for line in lines:
            if entry and (len(entry) >= self._batch or size + len(line) > self._max):
                entries.append(entry)
                entry, size = [], 0
            entry.append(line)
            size += len(line)
        if entry:
            entries.append(entry)
        request: list[list[bytes]] = []
        size = 0
        for entry in entries:
            n = sum(len(line) for line in entry)
            if request and (size + n > self._max or len(request) >= MAX_ENTRIES):
                yield request
                request, size = [], 0
            request.append(entry)
            size += n
        if request:
            yield request

    def close(self) -> None:
        self._api.close()


def post_status(api: FleetApi, status: EdgeStatus, signer: DeviceSigner | None) -> None:
    """Send one report through the API: signed, to the signed relay; unsigned, to the
    JSON relay. ApiUnreachable on an outage; StatusRefused when the API refuses it."""
    data = status.to_wire()
    device = check_name("device id", status.device_id)
    if signer is None:
        path, body = f"/v1/devices/{device}/status", data
    else:
        path = f"/v1/devices/{device}/status/signed"
        report = RelayedStatus(payload=data, device=device, sig=signer.sign(STATUS, data))
        body = report.model_dump_json().encode()
    code, answer = api.post(path, body)
    if not 200 <= code < 300:
        raise StatusRefused(f"POST {path}: HTTP {code} {detail(answer)}".rstrip())


class StatusRefused(Exception):
    """The API refused a status report (4xx): logged and counted; the next tick tries a
    new one."""
