"""Simulated devices: many in one process, each speaking the edge's wire protocol with
the edge's own code, none with an interpreter of its own.

A device here does what ``edgeloop-edge`` does on the wire and nothing else:

- status reports through ``shared.status_report.add_status`` (the edge reporter's
  writer: stream entry, health key with its TTL, device index);
- feedback as frames with idempotency ids ``<device>:<epoch>:<seq>``, several events
  an entry, in one ``ADD_FRAMES_SCRIPT`` call (``edge.uplink.RedisSink``'s path);
- announcements read from the fleet's deltas stream (one XREAD per process, handed
  to every device of the model: the multiplexing) and parsed as the updater does;
- versions fetched and verified per device: the signed manifest verified with the
  fleet's public key (``shared.signing.Verifier``) before a field of it is believed,
  then the patch from the served version (``shared.delta.apply_patch``) or the full
  file, its size and sha256 checked (``edge.updater.materialize``).

It does not load the model into a TFLite interpreter, predict, keep a spool or a
local model store, or run the swap guard: those cost CPU on the device, not on the cloud.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.codec import check_sha256
from shared.errors import EdgeloopError, IntegrityError
from shared.feedback_stream import ADD_FRAMES_SCRIPT, feedback_stream, frame, frame_entries
from shared.keys import FleetKeys
from shared.messages import (
    DeltaAnnouncement,
    EdgeCounters,
    EdgeStatus,
    FeedbackEvent,
    SignedManifest,
)
from shared.payloads import materialize, payload_bound
from shared.redis_client import connect_redis
from shared.signing import Verifier
from shared.status_report import add_status

#: A stream entry as redis-py returns it (bytes, no decoding).
Entry = tuple[bytes, dict[bytes, bytes]]

STATUS_TTL_S = 600
STATUS_MAXLEN_PER_DEVICE = 4
MAX_MODEL_BYTES = 64 * 1024 * 1024


@dataclass
class SimDevice:
    device_id: str
    fleet: str
    model: str
    epoch: int = 1
    seq: int = 0
    version: int | None = None
    sha256: str | None = None
    data: bytes | None = None  # the served file, the base of the next patch
    served_at: dict[int, float] = field(default_factory=dict)  # version -> when served
    patches: int = 0
    full: int = 0
    refused: int = 0
    sent: int = 0

    def status(self) -> EdgeStatus:
        return EdgeStatus(
            device_id=self.device_id,
            fleet=self.fleet,
            model=self.model,
            version=self.version,
            sha256=self.sha256,
            state="serving" if self.version is not None else "starting",
            counters=EdgeCounters(labeled=self.sent),
        )


@dataclass
class WorkerSpec:
    """One process's share of the fleet and what it is to do."""

    redis_url: str
    public_key: bytes
    devices: list[tuple[str, str, str]]  # (device id, fleet, model)
    events_per_device: int
    batch: int
    samples: npt.NDArray[Any]
    labels: npt.NDArray[Any]
    status_interval_s: float
    deadline_s: float
    want_versions: int  # new versions each device must serve before the process ends


def _fetch(
    client: Any, keys: FleetKeys, dev: SimDevice, ann: DeltaAnnouncement, v: Verifier
) -> bytes:
    """The announced version's bytes for ``dev``, verified as the edge's updater does."""
    raw = client.get(ann.manifest_key)
    if raw is None:
        raise IntegrityError(f"no manifest at {ann.manifest_key}")
    signed = SignedManifest.from_wire(raw)
    v.verify(signed.manifest_json.encode("utf-8"), signed.signature)
    manifest = signed.manifest()
    if manifest.sha256 != ann.sha256 or manifest.model != dev.model:
        raise IntegrityError("the signed manifest describes another version")
    patch = ann.patch_from(dev.sha256) if dev.data is not None else None
    for payload, base in ((patch, dev.data), (ann.full_payload(), None)):
        if payload is None:
            continue
        blob = client.get(payload.key)
        if blob is None or len(blob) > payload_bound(manifest.size):
            continue
        try:
            data = materialize(payload, blob, base, MAX_MODEL_BYTES)
            if len(data) != manifest.size:
                raise IntegrityError("model file size differs from its manifest")
            check_sha256(data, manifest.sha256, what="model file")
        except EdgeloopError:
            continue
        if base is not None:
            dev.patches += 1
        else:
            dev.full += 1
        return data
    raise IntegrityError(f"no payload of {ann.sha256[:12]} verified")


def _follow(
    client: Any,
    keys: dict[str, FleetKeys],
    by_model: dict[tuple[str, str], list[SimDevice]],
    anns: list[tuple[str, DeltaAnnouncement]],
    verifier: Verifier,
) -> list[SimDevice]:
    """Every device of an announcement's model fetches and serves it (newest wins);
    the devices that changed version."""
    changed = []
    for fleet, ann in anns:
        for dev in by_model.get((fleet, ann.model), []):
            if dev.version is not None and dev.version >= ann.version:
                continue
            try:
                dev.data = _fetch(client, keys[fleet], dev, ann, verifier)
            except EdgeloopError:
                dev.refused += 1
                continue
            dev.version, dev.sha256 = ann.version, ann.sha256
            dev.served_at[ann.version] = time.time()
            changed.append(dev)
    return changed


def _parse(keys: FleetKeys, fields: dict[bytes, bytes]) -> DeltaAnnouncement | None:
    raw = fields.get(b"data")
    if raw is None:
        return None
    try:
        ann = DeltaAnnouncement.from_wire(raw)
    except EdgeloopError:
        return None
    named = (ann.manifest_key, *(p.key for p in ann.payloads))
    return ann if all(keys.owns(k) for k in named) else None


def _report(client: Any, keys: dict[str, FleetKeys], devices: list[SimDevice], n_all: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i, dev in enumerate(devices):
        add_status(
            pipe, keys[dev.fleet], dev.status(), STATUS_TTL_S, STATUS_MAXLEN_PER_DEVICE * n_all
        )
        if i % 500 == 499:
            pipe.execute()
    pipe.execute()


def _send_feedback(
    client: Any, keys: dict[str, FleetKeys], devs: list[SimDevice], spec: WorkerSpec
) -> None:
    script = client.register_script(ADD_FRAMES_SCRIPT)
    rng = np.random.default_rng(len(devs))
    shape = list(spec.samples.shape[1:])
    for dev in devs:
        frames = []
        for _ in range(spec.events_per_device):
            dev.seq += 1
            i = int(rng.integers(len(spec.samples)))
            event = FeedbackEvent(
                event_id=f"{dev.device_id}:{dev.epoch}:{dev.seq}",
                device_id=dev.device_id,
                model=dev.model,
                x_shape=shape,
                x_dtype="float32",
                label=int(spec.labels[i]),
                model_version=dev.version,
                model_sha256=dev.sha256,
            )
            frames.append(frame(event.to_wire(), spec.samples[i].astype(np.float32).tobytes()))
        stream = feedback_stream(keys[dev.fleet], dev.model)
        script(keys=[stream], args=frame_entries(frames, spec.batch))
        dev.sent += len(frames)


def run_worker(spec: WorkerSpec, go_feedback: Any, ready: Any) -> dict[str, Any]:
    """Bring this process's devices up on the newest announced version, report, send
    their feedback when ``go_feedback`` is set, and follow announcements until each
    serves ``want_versions`` newer versions (or the deadline); their records."""
    client: Any = connect_redis(spec.redis_url)
    verifier = Verifier(spec.public_key)
    devs = [SimDevice(d, f, m) for d, f, m in spec.devices]
    keys = {f: FleetKeys(f) for f in {d.fleet for d in devs}}
    by_model: dict[tuple[str, str], list[SimDevice]] = {}
    for dev in devs:
        by_model.setdefault((dev.fleet, dev.model), []).append(dev)
    n_all = max(len(devs), 1000)
    # converge: the newest announcement of each fleet's stream, as a new edge does
    last_ids: dict[str, bytes] = {}
    for fleet, k in keys.items():
        recent: list[Entry] = client.xrevrange(k.deltas, count=200)
        last_ids[fleet] = recent[0][0] if recent else b"0-0"
        found = [a for _, fields in reversed(recent) if (a := _parse(k, fields)) is not None]
        newest: dict[str, DeltaAnnouncement] = {}
        for a in found:
            newest[a.model] = a
        _follow(client, keys, by_model, [(fleet, a) for a in newest.values()], verifier)
    start_versions = {d.device_id: d.version or 0 for d in devs}
    _report(client, keys, devs, n_all)
    ready.put(len(devs))
    go_feedback.wait()
    _send_feedback(client, keys, devs, spec)
    deadline = time.monotonic() + spec.deadline_s
    next_report = time.monotonic() + spec.status_interval_s

    def done() -> bool:
        return all(
            sum(1 for v in d.served_at if v > start_versions[d.device_id]) >= spec.want_versions
            for d in devs
        )

    while not done() and time.monotonic() < deadline:
        resp: list[tuple[bytes, list[Entry]]] = client.xread(
            {keys[f].deltas: last_ids[f] for f in keys}, count=100, block=250
        )
        anns: list[tuple[str, DeltaAnnouncement]] = []
        for stream, entries in resp or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            fleet = next(f for f, k in keys.items() if k.deltas == name)
            for entry_id, fields in entries:
                last_ids[fleet] = entry_id
                if (a := _parse(keys[fleet], fields)) is not None:
                    anns.append((fleet, a))
        changed = _follow(client, keys, by_model, anns, verifier)
        if changed:
            _report(client, keys, changed, n_all)  # the reporter is kicked on a swap
        if time.monotonic() >= next_report:
            _report(client, keys, devs, n_all)
            next_report = time.monotonic() + spec.status_interval_s
    _report(client, keys, devs, n_all)
    client.close()
    return {
        "devices": len(devs),
        "sent": sum(d.sent for d in devs),
        "served_at": [
            (d.device_id, v, t)
            for d in devs
            for v, t in d.served_at.items()
            if v > start_versions[d.device_id]
        ],
        "start_versions": start_versions,
        "final_versions": {d.device_id: d.version for d in devs},
        "patches": sum(d.patches for d in devs),
        "full": sum(d.full for d in devs),
        "refused": sum(d.refused for d in devs),
    }
