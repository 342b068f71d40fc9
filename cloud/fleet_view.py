"""A fleet's devices in the public shapes, and what edges may write over HTTP.

Reads come from the keys the edges' status reporter writes (``edge/status.py``):
the device key (the latest ``EdgeStatus``, with a TTL: gone means offline) and
the device index (a sorted set by last-seen time). Writes over HTTP land in
exactly the places an edge with Redis access writes to:

- a status report: XADD to the status stream (capped ~), SET the device key with
  a TTL, ZADD the device index, in one pipeline, as ``StatusReporter.publish``;
- feedback: XADD entries of up to ``feedback_batch`` events, one
  ``FeedbackEvent`` JSON per line in the field ``events``, as
  ``FeedbackUplink._xadd``, so the trainer's ingest, deduplication and dead
  letters treat them as any edge's.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import redis

from cloud.api.schemas import (
    DevicePublic,
    DevicesPublic,
    FeedbackAcceptedPublic,
    FleetPublic,
    ModelTarget,
)
from cloud.registry import Registry
from shared.errors import InputError, MessageError, NotFound
from shared.keys import FEEDBACK_BATCH_FIELD, FleetKeys, check_name
from shared.messages import SCHEMA_VERSION, EdgeStatus, FeedbackEvent
from shared.rollouts import desired_sha


class DeviceNotFound(NotFound):
    """The fleet has never heard from a device by that id."""


class FleetView:
    """Read one fleet's devices; write status and feedback on an edge's behalf."""

    def __init__(self, client: redis.Redis, keys: FleetKeys, registry: Registry) -> None:
        self.client = client
        self.keys = keys
        self.registry = registry

    @property
    def fleet(self) -> str:
        return self.keys.fleet

    # -- reading ----------------------------------------------------------------

    def list_devices(self, limit: int = 1000, offset: int = 0) -> DevicesPublic:
        total = int(self.client.zcard(self.keys.devices))
        seen = self.client.zrevrange(self.keys.devices, offset, offset + limit - 1, withscores=True)
        devices = self._devices([(raw.decode(), float(ts)) for raw, ts in seen])
        return DevicesPublic(fleet=self.fleet, total=total, devices=devices)

    def read_device(self, device_id: str) -> DevicePublic:
        ts = self.client.zscore(self.keys.devices, device_id)
        devices = self._devices([(device_id, float(ts) if ts is not None else None)])
        if ts is None and devices[0].health == "offline":
            raise DeviceNotFound(f"fleet {self.fleet} has no device {device_id!r}")
        return devices[0]

    def read_fleet(self) -> FleetPublic:
        seen = self.client.zrevrange(self.keys.devices, 0, -1, withscores=True)
        devices = self._devices([(raw.decode(), float(ts)) for raw, ts in seen])
        by_version = Counter(_version_label(d) for d in devices)
        by_health = Counter(d.health for d in devices)
        models = {name: self._model_target(name) for name in self.registry.models()}
        return FleetPublic(
            fleet=self.fleet, devices=len(devices),
            online=sum(1 for d in devices if d.health != "offline"),
            by_version=dict(sorted(by_version.items())), by_health=dict(sorted(by_health.items())),
            models=models,
        )  # fmt: skip

    def statuses(self) -> list[DevicePublic]:
        """Every device the fleet has seen (for the metrics)."""
        seen = self.client.zrevrange(self.keys.devices, 0, -1, withscores=True)
        return self._devices([(raw.decode(), float(ts)) for raw, ts in seen])

    def _model_target(self, model: str) -> ModelTarget:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.target(model))
        pipe.get(self.keys.active_rollout(model))
        target, active = (v.decode() if v else None for v in pipe.execute())
        version = None
        if target is not None:
            try:
                version = self.registry.get(model, target).version
            except NotFound:
                version = None
        return ModelTarget(target_version=version, target_sha256=target, active_rollout=active)

    def _devices(self, seen: list[tuple[str, float | None]]) -> list[DevicePublic]:
        seen = [(d, ts) for d, ts in seen if _safe(d)]  # the index holds only what edges wrote
        if not seen:
            return []
        raws = self.client.mget([self.keys.device(d) for d, _ in seen])
        statuses: list[EdgeStatus | None] = []
        for raw in raws:
            try:
                statuses.append(EdgeStatus.from_wire(raw) if raw else None)
            except MessageError:
                statuses.append(None)
        desired = self._desired([(d, s) for (d, _), s in zip(seen, statuses, strict=True)])
        return [
            _device_public(device, ts, status, desired.get(device, (None, None, None)))
            for (device, ts), status in zip(seen, statuses, strict=True)
        ]

    def _desired(
        self, devices: list[tuple[str, EdgeStatus | None]]
    ) -> dict[str, tuple[str | None, str | None, str | None]]:
        """(target, assignment, pin) of each device for the model it reported serving."""
        known = [(d, s.model) for d, s in devices if s is not None and _safe(s.model)]
        if not known:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for device, model in known:
            pipe.get(self.keys.target(model))
            pipe.hget(self.keys.assignments(model), device)
            pipe.hget(self.keys.pins(model), device)
        values = [v.decode() if v else None for v in pipe.execute()]
        return {
            device: (values[3 * i], values[3 * i + 1], values[3 * i + 2])
            for i, (device, _) in enumerate(known)
        }

    # -- writing on an edge's behalf ------------------------------------------------

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
        data = status.to_wire()
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(self.keys.status, {"data": data}, maxlen=maxlen, approximate=True)
        pipe.set(self.keys.device(status.device_id), data, ex=ttl_s)
        pipe.zadd(self.keys.devices, {status.device_id: status.ts})
        pipe.execute()

    def append_feedback(self, events: list[FeedbackEvent], batch: int) -> FeedbackAcceptedPublic:
        for e in events:
            _check_event(e)
        lines = [e.to_wire() for e in events]
        pipe = self.client.pipeline(transaction=True)  # a request's events land whole or not at all
        for i in range(0, len(lines), batch):
            pipe.xadd(self.keys.feedback, {FEEDBACK_BATCH_FIELD: b"\n".join(lines[i : i + batch])})
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in pipe.execute()]
        return FeedbackAcceptedPublic(accepted=len(events), entries=ids)


def _safe(name: str) -> bool:
    try:
        check_name("name", name)
    except ValueError:
        return False
    return True


def _check_version(version: int, what: str) -> None:
    if version != SCHEMA_VERSION:
        raise InputError(
            f"{what} schema_version {version} is not supported (this API speaks {SCHEMA_VERSION})"
        )


def _check_event(e: FeedbackEvent) -> None:
    """What the API can refuse at once; the rest (feature count, label range, model) is the
    trainer's, which dead-letters an event with the reason as it does any edge's."""
    _check_version(e.schema_version, "FeedbackEvent")
    head, _, seq = e.event_id.rpartition(":")
    if not head.startswith(e.device_id + ":") or not seq.isdigit():
        raise InputError(
            f"event_id {e.event_id!r} must be '<device_id>:<epoch>:<seq>' for device "
            f"{e.device_id!r} (seq a number): it is the event's idempotency key"
        )
    if not all(math.isfinite(v) for v in e.x):
        raise InputError(f"event {e.event_id}: x holds a NaN or infinite value")
    if not e.x:
        raise InputError(f"event {e.event_id}: x is empty")


def _version_label(d: DevicePublic) -> str:
    if d.health == "offline":
        return "unknown"
    return f"v{d.version}" if d.version is not None else "baseline"


def _device_public(
    device: str,
    ts: float | None,
    s: EdgeStatus | None,
    desired: tuple[str | None, str | None, str | None],
) -> DevicePublic:
    target, assigned, pinned = desired
    common: dict[str, Any] = {"device_id": device, "last_seen": ts}
    if s is None:
        return DevicePublic(health="offline", **common)
    return DevicePublic(
        health=s.state, model=s.model, version=s.version, sha256=s.sha256,
        desired_sha256=desired_sha(target, assigned, pinned), pinned_sha256=pinned,
        assigned_sha256=assigned, runtime=s.runtime, uptime_s=s.uptime_s,
        rolling_accuracy=s.rolling_accuracy, latency_ms_p50=s.latency_ms_p50,
        latency_ms_p99=s.latency_ms_p99, counters=s.counters, last_error=s.last_error,
        refused_sha256=s.refused_sha256, revert_reason=s.revert_reason,
        **{**common, "last_seen": ts if ts is not None else s.ts},
    )  # fmt: skip
