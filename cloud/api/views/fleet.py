"""A fleet's devices in the public shapes of the REST API.

Everything comes from the keys a status report writes (``shared.status_report``):
the device key (the latest ``EdgeStatus``, with a TTL: gone means offline) and
the device index (a sorted set by last-seen time), with each device's desired
version from the rollout state, per model it serves (``EdgeStatus.serving``). The
fleet's summary comes from the counts kept as statuses are written
(``cloud.registry.fleet_counts``), not from the devices, counts devices per model
too, and lists the quarantined devices
(cloud/data/quarantine.py), whose release is the one write here; the other
writes for devices are ``cloud.api.relay``'s.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence

import redis

from cloud.api.schemas import (
    DevicePublic,
    DevicesPublic,
    FleetPublic,
    ModelTarget,
    QuarantinedPublic,
    QuarantinePublic,
    QuarantineReleased,
    ServingPublic,
)
from cloud.data.quarantine import NotQuarantined, Quarantine
from cloud.registry.fleet_buckets import safe
from cloud.registry.fleet_counts import FleetCounts
from cloud.registry.versions import Registry
from cloud.rollout.director import Director
from shared import replies
from shared.errors import InputError, MessageError, NotFound
from shared.keys import FleetKeys
from shared.messages import EdgeStatus
from shared.rollouts import desired_sha

logger = logging.getLogger(__name__)

#: (target, assignment, pin) by (device, model).
Desired = dict[tuple[str, str], tuple[str | None, str | None, str | None]]


class DeviceNotFound(NotFound):
    """The fleet has never heard from a device by that id."""


class FleetView:
    """One fleet's devices, their versions and health, as the API shows them."""

    def __init__(
        self,
        client: redis.Redis,
        keys: FleetKeys,
        registry: Registry,
        director: Director | None = None,
        counts: FleetCounts | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.registry = registry
        #: The fleet's figures kept as statuses are written: what the summary reads.
        self.counts = counts if counts is not None else FleetCounts(client, keys)
        #: Set (the API's director_key): each model also shows its signed fleet order.
        self.director = director

    @property
    def fleet(self) -> str:
        return self.keys.fleet

    # -- reading ----------------------------------------------------------------

    def list_devices(
        self, limit: int = 100, offset: int = 0, cursor: str | None = None
    ) -> DevicesPublic:
        """A page of devices: by last report, newest first, from ``offset``; or, given a
        ``cursor`` ("" for the first page), by id after it, with the next page's cursor:
        a walk by cursor sees every device once, even while devices report."""
        total = int(self.client.zcard(self.keys.devices))
        if cursor is None:
            devices = self._devices(self._seen(offset, offset + limit - 1))
            return DevicesPublic(fleet=self.fleet, total=total, devices=devices)
        if cursor and not safe(cursor):
            raise InputError(f"cursor {cursor!r} is not one this API gave (a device id)")
        self.counts.read_refresh()
        ids, next_cursor = self.counts.page(cursor, limit)
        scores = self.client.zmscore(self.keys.devices, ids) if ids else []
        seen = [
            (d, float(ts) if ts is not None else None) for d, ts in zip(ids, scores, strict=True)
        ]
        return DevicesPublic(
            fleet=self.fleet, total=total, devices=self._devices(seen), next_cursor=next_cursor
        )

    def read_device(self, device_id: str) -> DevicePublic:
        ts = self.client.zscore(self.keys.devices, device_id)
        devices = self._devices([(device_id, float(ts) if ts is not None else None)])
        if ts is None and devices[0].health == "offline":
            raise DeviceNotFound(f"fleet {self.fleet} has no device {device_id!r}")
        return devices[0]

    def read_fleet(self) -> FleetPublic:
        """The fleet's summary from its counts (``cloud.registry.fleet_counts``): no device
        is read, whatever the fleet's size; the counts are brought up to date first."""
        self.counts.read_refresh()
        f = self.counts.read()
        by_health = f.by_health()
        names = [*self.registry.models()]
        names += sorted(set(f.models) - set(names))
        models = {}
        for name in names:
            by_version = dict(sorted((f.model_versions.get(name) or {}).items()))
            models[name] = self._model_target(name, f.models.get(name, 0), by_version)
        return FleetPublic(
            fleet=self.fleet,
            devices=f.devices,
            online=f.devices - by_health.get("offline", 0),
            by_version=f.by_version(),
            by_health=by_health,
            stale=f.stale,
            models=models,
            quarantined=self.quarantined(names),
        )

    def scan_fleet(self) -> FleetPublic:
        """The summary by reading every device's status: what ``read_fleet`` answered
        before the counts, kept to check them (tests, ``bench/fleet.py``)."""
        devices = self._devices(self._seen())
        by_version = Counter(version_label(d) for d in devices)
        by_health = Counter(d.health for d in devices)
        names = [*self.registry.models()]
        names += sorted({m for d in devices for m in d.models} - set(names))
        models = {}
        for name in names:
            on = [d.models[name] for d in devices if d.health != "offline" and name in d.models]
            versions = Counter(f"v{m.version}" if m.version is not None else "baseline" for m in on)
            models[name] = self._model_target(name, len(on), dict(sorted(versions.items())))
        return FleetPublic(
            fleet=self.fleet,
            devices=len(devices),
            online=sum(1 for d in devices if d.health != "offline"),
            by_version=dict(sorted(by_version.items())),
            by_health=dict(sorted(by_health.items())),
            stale=sorted(d.device_id for d in devices if d.stale and d.health != "offline"),
            models=models,
            quarantined=self.quarantined(names),
        )

    # -- quarantine (cloud/data/quarantine.py) ----------------------------------

    def quarantined(self, models: Iterable[str] | None = None) -> list[QuarantinedPublic]:
        """The devices quarantined for any of ``models`` (default: every published model)."""
        out = []
        for model in models if models is not None else self.registry.models():
            if not safe(model):
                continue
            q = Quarantine(self.client, self.keys, model)
            for device, r in sorted(q.members().items()):
                out.append(
                    QuarantinedPublic(
                        device_id=device,
                        model=model,
                        reason=r.reason,
                        rate=r.rate,
                        fleet_rate=r.fleet_rate,
                        checked=r.checked,
                        kept=q.kept(device),
                        since=r.since,
                    )
                )
        return out

    def read_quarantine(self) -> QuarantinePublic:
        return QuarantinePublic(fleet=self.fleet, devices=self.quarantined())

    def release_quarantine(self, device_id: str, model: str | None, by: str) -> QuarantineReleased:
        """End a device's quarantine for ``model`` (default: every model it is quarantined
        for); its kept feedback is queued for training again. NotQuarantined if none."""
        models = [model] if model is not None else [*self.registry.models()]
        released, requeued = [], 0
        for name in models:
            q = Quarantine(self.client, self.keys, name)
            if device_id in q.members():
                requeued += q.release(device_id)
                released.append(name)
        if not released:
            where = f"for {model}" if model is not None else "for any model"
            raise NotQuarantined(f"device {device_id!r} is not quarantined {where}")
        logger.info("%s released %s from quarantine for %s", by, device_id, released)
        return QuarantineReleased(device_id=device_id, models=released, requeued=requeued)

    def statuses(self) -> list[DevicePublic]:
        """Every device the fleet has seen, read one by one (``/metrics`` reads the counts;
        this is the scan they are checked against)."""
        return self._devices(self._seen())

    def _seen(self, start: int = 0, end: int = -1) -> list[tuple[str, float]]:
        """(device, last seen) from the device index, the most recent first."""
        return _scored(self.client.zrevrange(self.keys.devices, start, end, withscores=True))

    def _model_target(self, model: str, devices: int, by_version: dict[str, int]) -> ModelTarget:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.target(model))
        pipe.get(self.keys.active_rollout(model))
        target, active = (replies.text(v) if v else None for v in pipe.execute())
        version = self._version(model, target)
        ordered = self.director.fleet_sha(model) if self.director is not None else None
        return ModelTarget(
            target_version=version,
            target_sha256=target,
            active_rollout=active,
            ordered_version=self._version(model, ordered),
            ordered_sha256=ordered,
            devices=devices,
            by_version=by_version,
        )

    def _version(self, model: str, sha: str | None) -> int | None:
        if sha is None:
            return None
        try:
            return self.registry.get(model, sha).version
        except NotFound:
            return None

    def _devices(self, seen: Sequence[tuple[str, float | None]]) -> list[DevicePublic]:
        seen = [(d, ts) for d, ts in seen if safe(d)]  # the index holds only what edges wrote
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
            _device_public(device, ts, status, desired)
            for (device, ts), status in zip(seen, statuses, strict=True)
        ]

    def _desired(self, devices: list[tuple[str, EdgeStatus | None]]) -> Desired:
        """(target, assignment, pin) of each device for each model it reported serving."""
        known = [(d, m) for d, s in devices if s is not None for m in _served(s) if safe(m)]
        if not known:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for device, model in known:
            pipe.get(self.keys.target(model))
            pipe.hget(self.keys.assignments(model), device)
            pipe.hget(self.keys.pins(model), device)
        values = [replies.text(v) if v else None for v in pipe.execute()]
        return {
            pair: (values[3 * i], values[3 * i + 1], values[3 * i + 2])
            for i, pair in enumerate(known)
        }


def _scored(reply: Iterable[object]) -> list[tuple[str, float]]:
    """A sorted set read with its scores, as (member, score) pairs."""
    pairs = []
    for pair in reply:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"expected (member, score) pairs, got {pair!r}")
        member, score = pair
        pairs.append((replies.text(member), float(score)))
    return pairs


def version_label(d: DevicePublic) -> str:
    """What a device serves, as the fleet's counts by version name it."""
    if d.health == "offline":
        return "unknown"
    return f"v{d.version}" if d.version is not None else "baseline"


#: What of a status report the device's public shape leaves out or names otherwise.
_NOT_PUBLIC = {"schema_version", "device_id", "fleet", "state", "ts", "models"}


def _served(s: EdgeStatus) -> list[str]:
    """The models an edge reports serving: every entry of ``models``, else its one model."""
    return list(s.models) or [s.model]


def _device_public(
    device: str, ts: float | None, s: EdgeStatus | None, desired: Desired
) -> DevicePublic:
    if s is None:
        return DevicePublic(device_id=device, health="offline", last_seen=ts)
    models = {}
    for name in _served(s):
        serving = s.serving(name)
        if serving is None:  # pragma: no cover - _served names only what serving() reads
            continue
        target, assigned, pinned = desired.get((device, name), (None, None, None))
        models[name] = ServingPublic(
            **serving.model_dump(),
            desired_sha256=desired_sha(target, assigned, pinned),
            pinned_sha256=pinned,
            assigned_sha256=assigned,
        )
    first = models.get(s.model)
    return DevicePublic(
        **s.model_dump(exclude=_NOT_PUBLIC),
        device_id=device,
        health=s.state,
        last_seen=ts if ts is not None else s.ts,
        desired_sha256=first.desired_sha256 if first else None,
        pinned_sha256=first.pinned_sha256 if first else None,
        assigned_sha256=first.assigned_sha256 if first else None,
        models=models,
    )
