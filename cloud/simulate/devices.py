"""Simulated devices: many in one process, each speaking the edge's wire protocol with
the edge's own code, none with an interpreter of its own.

A device here does what ``edgeloop-edge`` does on the wire and nothing else:

- status reports through ``shared.status_report.add_status`` (the edge reporter's
  writer: stream entry, health key with its TTL, device index), every 10 s and on
  each swap;
- feedback as frames with idempotency ids ``<device>:<epoch>:<seq>``, several events
  an entry, in one ``ADD_FRAMES_SCRIPT`` call (``edge.uplink.RedisSink``'s path);
- the desired version read as the updater's ``_read_unsigned`` reads it (target,
  assignment, pin), else the newest announcement; announcements and assignment
  notices come from one XREAD of the deltas stream per process (per fleet on a
  cluster), which nudges every device of the fleet: the multiplexing;
- versions fetched and verified per device: the signed manifest verified with the
  fleet's public key (``shared.signing.Verifier``) before a field of it is believed,
  then the patch from the served version (``shared.delta.apply_patch``) or the full
  file, its size and sha256 checked (``shared.payloads.materialize``, the updater's own).

It does not load the model into a TFLite interpreter, predict, keep a spool or a
local model store, or run the swap guard: those cost CPU on the device, not on the cloud.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.codec import check_sha256, is_sha256
from shared.errors import EdgeloopError, IntegrityError
from shared.feedback_stream import ADD_FRAMES_SCRIPT, feedback_stream, frame, frame_entries
from shared.keys import FleetKeys
from shared.messages import (
    DeltaAnnouncement,
    EdgeCounters,
    EdgeStatus,
    FeedbackEvent,
    Payload,
    SignedManifest,
)
from shared.payloads import materialize, payload_bound
from shared.redis_client import connect_redis
from shared.rollouts import desired_sha
from shared.signing import Verifier
from shared.status_report import add_status

#: A stream entry as redis-py returns it (bytes, no decoding).
Entry = tuple[bytes, dict[bytes, bytes]]

STATUS_TTL_S = 600
#: The status stream's cap: the edge's default ``status_stream_maxlen``.
STATUS_STREAM_MAXLEN = 10_000
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
    failed: set[str] = field(default_factory=set)  # versions refused: not fetched again
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
    soak_every_s: float = 60.0  # in the soak, each device sends its events this often


def _fetch(
    client: Any,
    keys: FleetKeys,
    dev: SimDevice,
    sha: str,
    ann: DeltaAnnouncement | None,
    v: Verifier,
) -> tuple[bytes, int]:
    """Version ``sha``'s bytes and number for ``dev``, verified as the edge's updater
    does: the signed manifest first, then the listed patch from the served version (or
    the conventional patch key), else the full file; size and sha256 checked."""
    raw = client.get(ann.manifest_key if ann is not None else keys.manifest(sha))
    if raw is None:
        raise IntegrityError(f"no manifest of {sha[:12]}")
    signed = SignedManifest.from_wire(raw)
    v.verify(signed.manifest_json.encode("utf-8"), signed.signature)
    manifest = signed.manifest()
    if manifest.sha256 != sha or manifest.model != dev.model:
        raise IntegrityError("the signed manifest describes another version")
    patch: Payload | None = None
    if dev.data is not None and dev.sha256 is not None:
        patch = ann.patch_from(dev.sha256) if ann is not None else None
        patch = patch or Payload(
            encoding="patch", key=keys.patch(dev.sha256, sha), size=0, base_sha256=dev.sha256
        )
    full = (
        ann.full_payload()
        if ann is not None
        else Payload(encoding="full", key=keys.artifact(sha), size=0)
    )
    for payload, base in ((patch, dev.data), (full, None)):
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
        return data, manifest.version
    raise IntegrityError(f"no payload of {sha[:12]} verified")


def _desired(client: Any, keys: dict[str, FleetKeys], devs: list[SimDevice]) -> list[str | None]:
    """Each device's ``desired_sha(target, assignment, pin)``, read as the updater's
    ``_read_unsigned`` reads it (pipelined over the devices)."""
    pipe = client.pipeline(transaction=False)
    for dev in devs:
        k = keys[dev.fleet]
        pipe.get(k.target(dev.model))
        pipe.hget(k.assignments(dev.model), dev.device_id)
        pipe.hget(k.pins(dev.model), dev.device_id)
    replies = pipe.execute()
    out: list[str | None] = []
    for i in range(len(devs)):
        values = [r.decode() if isinstance(r, bytes) else None for r in replies[3 * i : 3 * i + 3]]
        values = [x if x is not None and is_sha256(x) else None for x in values]
        out.append(desired_sha(*values))
    return out


def _follow(
    client: Any,
    keys: dict[str, FleetKeys],
    devs: list[SimDevice],
    announced: dict[tuple[str, str], dict[str, DeltaAnnouncement]],
    verifier: Verifier,
) -> list[SimDevice]:
    """Each of ``devs`` serves its desired version (else the newest announced one), as
    the updater's ``_follow`` does; the devices that changed version."""
    changed = []
    for dev, sha in zip(devs, _desired(client, keys, devs), strict=True):
        anns = announced.get((dev.fleet, dev.model), {})
        if sha is None and anns:
            sha = max(anns.values(), key=lambda a: a.version).sha256
        if sha is None or sha == dev.sha256 or sha in dev.failed:
            continue
        try:
            dev.data, version = _fetch(client, keys[dev.fleet], dev, sha, anns.get(sha), verifier)
        except EdgeloopError:
            dev.refused += 1
            dev.failed.add(sha)
            continue
        dev.version, dev.sha256 = version, sha
        dev.served_at.setdefault(version, time.time())
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


def _report(client: Any, keys: dict[str, FleetKeys], devices: list[SimDevice]) -> None:
    pipe = client.pipeline(transaction=False)
    for i, dev in enumerate(devices):
        add_status(pipe, keys[dev.fleet], dev.status(), STATUS_TTL_S, STATUS_STREAM_MAXLEN)
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
            # from 0, as an edge counts (edge/sequence.py): a first number of 1 would leave
            # a gap at 0 that the trainer's watermark keeps every later number above
            seq, dev.seq = dev.seq, dev.seq + 1
            i = int(rng.integers(len(spec.samples)))
            event = FeedbackEvent(
                event_id=f"{dev.device_id}:{dev.epoch}:{seq}",
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


def run_worker(
    spec: WorkerSpec, go_feedback: Any, ready: Any, out: Any, stop: Any, soak: Any
) -> dict[str, Any]:
    """Bring this process's devices up on the newest announced version, report, send
    their feedback when ``go_feedback`` is set, and follow announcements until each
    serves ``want_versions`` newer versions (or the deadline); their records go to
    ``out``. Then go on following (a staged rollout) until ``stop`` is set, and once
    ``soak`` is set each device sends its events again every ``soak_every_s``; the
    versions served at the end and the events sent are returned."""
    client: Any = connect_redis(spec.redis_url)
    verifier = Verifier(spec.public_key)
    devs = [SimDevice(d, f, m) for d, f, m in spec.devices]
    keys = {f: FleetKeys(f) for f in {d.fleet for d in devs}}
    # converge: the announcements a new edge looks back on, then the desired version
    announced: dict[tuple[str, str], dict[str, DeltaAnnouncement]] = {}
    last_ids: dict[str, bytes] = {}
    for fleet, k in keys.items():
        recent: list[Entry] = client.xrevrange(k.deltas, count=200)
        last_ids[fleet] = recent[0][0] if recent else b"0-0"
        for _, fields in reversed(recent):
            if (a := _parse(k, fields)) is not None:
                announced.setdefault((fleet, a.model), {})[a.sha256] = a
    _follow(client, keys, devs, announced, verifier)
    start_versions = {d.device_id: d.version or 0 for d in devs}
    _report(client, keys, devs)
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

    # A cluster refuses one XREAD over fleets in different slots: one per fleet there.
    cluster = hasattr(client, "get_nodes")
    groups = [[f] for f in keys] if cluster else [list(keys)]

    def follow(until: Any) -> None:
        while not until():
            step()

    def step() -> None:
        nonlocal next_report
        resp: list[tuple[bytes, list[Entry]]] = []
        for group in groups:
            resp += (
                client.xread(
                    {keys[f].deltas: last_ids[f] for f in group},
                    count=100,
                    block=max(1, 250 // len(groups)),
                )
                or []
            )
        nudged: set[str] = set()
        for stream, entries in resp:
            name = stream.decode()
            fleet = next(f for f, k in keys.items() if k.deltas == name)
            for entry_id, fields in entries:
                last_ids[fleet] = entry_id
                nudged.add(fleet)  # an announcement or an assignment notice
                if (a := _parse(keys[fleet], fields)) is not None:
                    announced.setdefault((fleet, a.model), {})[a.sha256] = a
        periodic = time.monotonic() >= next_report
        concerned = devs if periodic else [d for d in devs if d.fleet in nudged]
        changed = _follow(client, keys, concerned, announced, verifier) if concerned else []
        if changed:
            _report(client, keys, changed)  # the reporter is kicked on a swap
        if periodic:
            _report(client, keys, devs)
            next_report = time.monotonic() + spec.status_interval_s

    def results() -> dict[str, Any]:
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

    follow(lambda: done() or time.monotonic() >= deadline)
    _report(client, keys, devs)
    out.put(results())
    swaps0 = {d.device_id: d.patches + d.full for d in devs}
    next_feedback = 0.0

    def soaked() -> bool:
        nonlocal next_feedback
        if soak.is_set() and time.monotonic() >= next_feedback:
            _send_feedback(client, keys, devs, spec)
            next_feedback = time.monotonic() + spec.soak_every_s
        return bool(stop.is_set())

    follow(soaked)
    _report(client, keys, devs)
    client.close()
    return {
        "sent": sum(d.sent for d in devs),
        "final_versions": {d.device_id: d.version for d in devs},
        "rollout_swaps": sum(d.patches + d.full - swaps0[d.device_id] for d in devs),
    }
