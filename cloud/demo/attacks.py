"""The attacks of issue 11, each against a live fleet, each answering whether it was stopped.

A fleet here (``AttackFleet``) is what the attacks scenario (``cloud.demo.attack_demo``)
starts: a redis-server, a TUF repository made by ``init_fleet``, a trainer holding
the targets key, a rollout controller holding the director key, and edge daemons,
each enrolled (its own Redis user and key), trusting the fleet's TUF root, one of
them connected through a ``StallProxy``. Exactly one version is *authorized*: the
one the director orders and the targets list. Every attack tries to make an edge
serve something else (or to poison what the cloud learns, or to hurt Redis), and
is stopped when every edge keeps serving the authorized version and the refusal
the design promises is seen: a counter, a dead letter, a ``NOPERM``, a ``stale``.

Each attack leaves the fleet as it found it (metadata restored, newer when the
edges may have trusted a newer version of it), so that the next one starts from
the same state and the scenario's normal loop (predictions, feedback, training
data) runs through all of them. The helpers that forge things (``forge_targets``,
``signed_variant``, ``feedback_fields``) are shared with the tests in
``tests/security``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, TargetFile, Targets

from cloud.demo.stall_proxy import StallProxy
from cloud.registry.devices import Credentials
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.tuf_keys import KeyDir, rotate_key
from cloud.registry.tuf_repo import TufRepository, TufSigners, load_signer
from cloud.registry.versions import MemoryBlobStore, Registry
from cloud.rollout.director import Director
from shared.codec import encode_full, sha256_hex
from shared.device_identity import FEEDBACK, DeviceKeyring, DeviceSigner
from shared.keys import FleetKeys
from shared.messages import DeadLetter, DeltaAnnouncement, EdgeStatus, Payload, SignedManifest
from shared.rollouts import AssignmentNotice
from shared.signing import Signer, generate_keypair
from shared.status_report import add_status, verified_statuses
from shared.tuf_paths import artifact_path

logger = logging.getLogger(__name__)

#: How long an attack watches the fleet after acting: several of the edges' polls.
WATCH_S = 2.0


@dataclass(frozen=True)
class AttackResult:
    name: str
    stopped: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "stopped": self.stopped, "detail": self.detail}


@dataclass
class AttackFleet:
    """What the attacks act on and watch. ``client`` is Redis's admin (what an attacker
    holding the fleet's Redis credentials has); keys and key files are the fleet's."""

    client: redis.Redis
    keys: FleetKeys
    model: str
    keydir: KeyDir
    manifest_signer: Signer  # the trainer's manifest key
    registry: Registry
    redis_url: str  # loopback, no credentials: the admin's
    authorized: str  # the sha256 the director orders and the targets list
    health: Callable[[], dict[str, EdgeStatus | None]]
    devices: dict[str, Credentials]
    workdir: Path
    proxy: StallProxy | None = None
    proxied_device: str | None = None
    #: the director's order that the current one replaced (signed, older counter)
    old_order: bytes | None = None
    #: the version that order named (an older, once authorized version)
    old_sha: str | None = None
    #: feedback events the attacks wrote that the trainer must dead-letter
    forged_events: int = 0
    #: what an edge served that neither the director nor the targets named
    violations: list[str] = field(default_factory=list)
    _variant: int = 0
    _before: dict[str, str | None] = field(default_factory=dict)
    _errors: dict[str, list[str]] = field(default_factory=dict)

    # -- the fleet's own tools -------------------------------------------------

    def online(self) -> TufRepository:
        return TufRepository(
            self.client, self.keys, TufSigners(online=load_signer(self.keydir.file("online")))
        )

    def trainer_publisher(self, release: str = "manual") -> Publisher:
        """The trainer's keys (manifest and TUF targets, and the online key as a
        development trainer has it), as a thief of the trainer would use them."""
        repo = TufRepository(
            self.client,
            self.keys,
            TufSigners(
                load_signer(self.keydir.file("targets")), load_signer(self.keydir.file("online"))
            ),
        )
        return Publisher(self.registry, self.manifest_signer, release=release, tuf=repo)  # type: ignore[arg-type]

    def next_variant(self) -> tuple[PublishRequest, bytes]:
        """A new, valid model file (the authorized one padded: same answers, another
        sha256) and its publish request: what an attacker would push is never broken,
        so that only the trust chain stands in its way."""
        self._variant += 1
        signed = SignedManifest.from_wire(
            cast(bytes, self.client.get(self.keys.manifest(self.authorized)))
        )  # type: ignore[arg-type]
        m = signed.manifest()
        content = self.registry.blobs.get(self.authorized) + b"\0" * (64 + self._variant)
        request = PublishRequest(
            m.model,
            content,
            m.num_features,
            m.labels,
            m.probe,
            m.runtime,
            input=m.input,
            task=m.task,
        )
        return request, content

    # -- watching ----------------------------------------------------------------

    def serving(self) -> dict[str, str | None]:
        return {d: (s.sha256 if s else None) for d, s in self.health().items()}

    def mark(self) -> None:
        """Start an attack: the edges' errors from now on are its evidence."""
        self._before = {d: (st.last_error if st else None) for d, st in self.health().items()}
        self._errors = {d: [] for d in self._before}

    def observe(self, what: str) -> dict[str, EdgeStatus | None]:
        """One look at every edge: a version other than the authorized one is a
        violation; a new error is kept as evidence."""
        health = self.health()
        for device, status in health.items():
            if status is None:
                continue
            if status.sha256 is not None and status.sha256 != self.authorized:
                self.violations.append(f"{what}: {device} served {status.sha256[:12]}")
            error = status.last_error
            if error and error != self._before.get(device) and error not in self._errors[device]:
                self._errors.setdefault(device, []).append(error)
        return health

    def reported(self, marker: str, devices: list[str] | None = None) -> bool:
        """Whether every edge (of ``devices``) reported an error containing ``marker``
        since ``mark``."""
        return all(
            any(marker in e for e in self._errors.get(d, [])) for d in devices or self.devices
        )

    def evidence(self, marker: str, devices: list[str] | None = None) -> str:
        first = [e for d in devices or self.devices for e in self._errors.get(d, []) if marker in e]
        return first[0][:200] if first else f"no edge reported {marker!r}"

    def hold(
        self,
        what: str,
        marker: str | None = None,
        seconds: float = WATCH_S,
        timeout: float = 15.0,
        devices: list[str] | None = None,
    ) -> bool:
        """Watch the edges for ``seconds`` and, with ``marker``, until every edge (of
        ``devices``) reported it (at most ``timeout``). True when no edge served
        anything but the authorized version meanwhile and the marker was reported."""
        violations = len(self.violations)
        start = time.monotonic()
        while True:
            self.observe(what)
            done = marker is None or self.reported(marker, devices)
            elapsed = time.monotonic() - start
            if (done and elapsed >= seconds) or elapsed >= max(seconds, timeout):
                return done and len(self.violations) == violations
            time.sleep(0.3)

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.3)
        return predicate()

    def device_client(self, device: str) -> redis.Redis:
        creds = self.devices[device]
        return redis.Redis.from_url(
            self.redis_url, username=creds.acl_user, password=creds.password
        )


# -- forging helpers (shared with tests/security) ---------------------------------


def signed_variant(
    fleet: AttackFleet, version: int, signer: Signer | None
) -> tuple[str, SignedManifest, bytes]:
    """A valid model file with a manifest claiming ``version``, signed by ``signer``
    (None: unsigned), written to the fleet's manifest and artifact keys as a
    publisher would; (sha256, manifest, stored artifact)."""
    request, content = fleet.next_variant()
    sha = sha256_hex(content)
    manifest = request.manifest(sha, None).model_copy(update={"version": version})
    text = manifest.model_dump_json()
    signed = SignedManifest(
        manifest_json=text, signature=signer.sign(text.encode()) if signer else None
    )
    blob = encode_full(content, level=3)
    fleet.client.set(fleet.keys.manifest(sha), signed.to_wire())
    fleet.client.set(fleet.keys.artifact(sha), blob)
    return sha, signed, blob


def announce(fleet: AttackFleet, sha: str, version: int, blob: bytes) -> None:
    ann = DeltaAnnouncement(
        model=fleet.model,
        version=version,
        sha256=sha,
        manifest_key=fleet.keys.manifest(sha),
        payloads=[Payload(encoding="full", key=fleet.keys.artifact(sha), size=len(blob))],
    )
    fleet.client.xadd(fleet.keys.deltas, {"data": ann.to_wire()})


def forge_targets(
    client: redis.Redis,
    keys: FleetKeys,
    signer: CryptoSigner,
    content: bytes,
    online: TufRepository | None,
) -> int:
    """Targets listing ``content`` signed by ``signer`` (a key the root does not name),
    one version above the stored targets, written to Redis; with ``online`` (an
    attacker who holds the online key too) snapshot and timestamp are re-signed over
    it, so that edges fetch it. The forged targets version."""
    key = keys.tuf_metadata("targets.json")
    targets = Metadata[Targets].from_bytes(bytes(client.get(key)))  # type: ignore[arg-type]
    tf = TargetFile.from_data(artifact_path(sha256_hex(content)), content, ["sha256"])
    targets.signed.targets[tf.path] = tf
    targets.signed.version += 1
    targets.sign(signer)
    client.set(key, targets.to_bytes())
    client.set(keys.artifact(sha256_hex(content)), content)
    if online is not None:
        online.refresh()
    return int(targets.signed.version)


def restore_targets(fleet: AttackFleet, saved: bytes, above: int) -> None:
    """Put the fleet's own targets back, re-signed by its targets key one version
    above ``above`` (a version the edges may have seen named in a snapshot), and
    re-sign snapshot and timestamp over them."""
    targets = Metadata[Targets].from_bytes(saved)
    targets.signed.version = above + 1
    targets.signatures.clear()
    targets.sign(load_signer(fleet.keydir.file("targets")))
    fleet.client.set(fleet.keys.tuf_metadata("targets.json"), targets.to_bytes())
    fleet.online().refresh()


def feedback_fields(
    fleet: str, claimed: str, private_pem: bytes | None, events: list[dict[str, Any]]
) -> dict[Any, Any]:
    """A feedback stream entry of ``events`` claiming device ``claimed``, signed with
    ``private_pem`` (None: unsigned), as an edge's uplink writes one."""
    body = b"\n".join(json.dumps(e).encode() for e in events)
    if private_pem is None:
        return {"events": body}
    return {"events": body, **DeviceSigner(fleet, claimed, private_pem).fields(FEEDBACK, body)}


def dead_letters(client: redis.Redis, keys: FleetKeys, since: str = "-") -> list[DeadLetter]:
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]], client.xrange(keys.deadletter, min=since)
    )
    return [DeadLetter.from_wire(f[b"data"]) for _, f in entries]


def _last_id(client: redis.Redis, stream: str) -> str:
    last = client.xrevrange(stream, count=1)
    if not last:
        return "0-0"
    ms, seq = cast(list[tuple[bytes, Any]], last)[0][0].decode().split("-")
    return f"{ms}-{int(seq) + 1}"


def _event(fleet: AttackFleet, device: str, n: int, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"{device}:forged:{n}",
        "device_id": device,
        "model": fleet.model,
        "x": [0.0] * 64,
        "label": n % 10,
        **extra,
    }


# -- the attacks ------------------------------------------------------------------


def unsigned_announcement(fleet: AttackFleet) -> AttackResult:
    """Arbitrary installation: a version with an unsigned manifest, announced and made
    the target, and an order naming it whose signature does not verify."""
    sha, _, blob = signed_variant(fleet, 901, None)
    announce(fleet, sha, 901, blob)
    fleet.client.set(fleet.keys.target(fleet.model), sha)
    saved = fleet.client.hget(fleet.keys.director(fleet.model), "fleet")
    forged = json.loads(bytes(saved))  # type: ignore[arg-type]
    order = json.loads(forged["order_json"])
    order["sha256"], order["counter"] = sha, order["counter"] + 1000
    forged["order_json"] = json.dumps(order, separators=(",", ":"))
    fleet.client.hset(fleet.keys.director(fleet.model), "fleet", json.dumps(forged))
    held = fleet.hold("unsigned", marker="does not verify")
    fleet.client.hset(fleet.keys.director(fleet.model), "fleet", saved)  # type: ignore[arg-type]
    fleet.client.delete(fleet.keys.target(fleet.model))
    return AttackResult(
        "arbitrary installation: unsigned version and order",
        held,
        "v901 (unsigned manifest) announced and made the target, and an order naming it "
        f"whose signature does not verify; every edge: {fleet.evidence('does not verify')}",
    )


def wrong_key(fleet: AttackFleet) -> AttackResult:
    """Arbitrary installation: a version signed by a key nobody trusts, listed in targets
    signed by that key, ordered by a director key that is not the fleet's."""
    attacker = Signer(generate_keypair()[0])
    sha, _, blob = signed_variant(fleet, 902, attacker)
    announce(fleet, sha, 902, blob)
    saved_targets = bytes(fleet.client.get(fleet.keys.tuf_metadata("targets.json")))  # type: ignore[arg-type]
    version = forge_targets(
        fleet.client,
        fleet.keys,
        CryptoSigner(Ed25519PrivateKey.generate()),
        fleet.registry.blobs.get(fleet.authorized) + b"\1" * 7,
        fleet.online(),  # the attacker holds the online key too: the edges fetch the targets
    )
    listed = fleet.hold("wrong key", marker="UnsignedMetadataError")
    evidence = fleet.evidence("UnsignedMetadataError")
    # Then the order (after the targets: an edge reports one refusal per poll, the last).
    saved_orders = fleet.client.hgetall(fleet.keys.director(fleet.model))
    Director(fleet.client, fleet.keys, attacker).order(fleet.model, sha)
    ordered = fleet.hold("wrong key", marker="trusts key")
    fleet.client.delete(fleet.keys.director(fleet.model))
    fleet.client.hset(fleet.keys.director(fleet.model), mapping=saved_orders)  # type: ignore[arg-type]
    restore_targets(fleet, saved_targets, version)
    return AttackResult(
        "arbitrary installation: signed by a wrong key",
        listed and ordered,
        f"v902 signed by an unknown manifest key, targets v{version} signed by an unknown "
        "key, an order signed by a director key the root does not name; every edge: "
        f"{evidence}; {fleet.evidence('trusts key')}",
    )


def replayed_announcement(fleet: AttackFleet) -> AttackResult:
    """Rollback: the announcement of an older version put back on the delta stream."""
    assert fleet.old_sha is not None
    entries = cast(list[tuple[bytes, dict[Any, Any]]], fleet.client.xrange(fleet.keys.deltas))
    old = [
        f
        for _, f in entries
        if b"data" in f and DeltaAnnouncement.from_wire(f[b"data"]).sha256 == fleet.old_sha
    ]
    if not old:
        return AttackResult("rollback: replayed old announcement", False, "no old announcement")
    fleet.client.xadd(fleet.keys.deltas, old[0])
    held = fleet.hold("replayed announcement")
    return AttackResult(
        "rollback: replayed old announcement",
        held,
        "the older version's announcement added again: the edges take their version "
        "from director orders only; every edge kept serving the ordered version",
    )


def raw_rollback_write(fleet: AttackFleet) -> AttackResult:
    """Rollback: unsigned writes of the target, an assignment and a pin naming an older
    version, with a notice that makes every edge read them at once."""
    assert fleet.old_sha is not None
    devices = sorted(fleet.devices)
    fleet.client.set(fleet.keys.target(fleet.model), fleet.old_sha)
    fleet.client.hset(fleet.keys.assignments(fleet.model), devices[0], fleet.old_sha)
    fleet.client.hset(fleet.keys.pins(fleet.model), devices[-1], fleet.old_sha)
    fleet.client.xadd(fleet.keys.deltas, {"assign": AssignmentNotice(model=fleet.model).to_wire()})
    held = fleet.hold("raw write")
    fleet.client.delete(
        fleet.keys.target(fleet.model),
        fleet.keys.assignments(fleet.model),
        fleet.keys.pins(fleet.model),
    )
    return AttackResult(
        "rollback: raw write of an old target, assignment and pin",
        held,
        f"target, {devices[0]}'s assignment and {devices[-1]}'s pin set to the older "
        "version without a signature: ignored by every edge",
    )


def replayed_order(fleet: AttackFleet) -> AttackResult:
    """Rollback: the director's own older order (validly signed, lower counter) put back."""
    assert fleet.old_order is not None
    current = fleet.client.hget(fleet.keys.director(fleet.model), "fleet")
    fleet.client.hset(fleet.keys.director(fleet.model), "fleet", fleet.old_order)
    held = fleet.hold("replayed order", marker="replayed order")
    # The controller would put its newer order back at its next check of the orders
    # (every 30 s; tests/security/test_director_rollout.py): the scenario does not wait.
    restored = fleet.client.hget(fleet.keys.director(fleet.model), "fleet") != fleet.old_order
    if not restored:
        fleet.client.hset(fleet.keys.director(fleet.model), "fleet", current)  # type: ignore[arg-type]
    return AttackResult(
        "rollback: replayed old director order",
        held,
        "the fleet's previous order (signed, lower counter) put back; every edge: "
        f"{fleet.evidence('replayed order')}"
        + ("; the controller restored its newer order" if restored else ""),
    )


def freeze(fleet: AttackFleet, ttl_s: int = 3) -> AttackResult:
    """Freeze: the edges are shown no timestamp newer than one that expires (the cloud's
    re-signing withheld): they report stale and keep serving."""
    TufRepository(
        fleet.client,
        fleet.keys,
        TufSigners(online=load_signer(fleet.keydir.file("online"))),
        timestamp_ttl_s=ttl_s,
    ).refresh()

    def all_stale() -> bool:
        return all(s is not None and s.stale for s in fleet.observe("freeze").values())

    stale = fleet.wait(all_stale, 20)
    held = fleet.hold("freeze", seconds=1.0)
    fleet.online().refresh()
    fresh = fleet.wait(
        lambda: all(s is not None and not s.stale for s in fleet.observe("freeze").values()), 20
    )
    return AttackResult(
        "freeze: expired timestamp",
        stale and held,
        f"no timestamp re-signed after one valid for {ttl_s}s: "
        + ("every edge reported stale and kept serving" if stale else "not every edge said stale")
        + ("; fresh again after the next re-sign" if fresh else ""),
    )


def other_fleet(fleet: AttackFleet) -> AttackResult:
    """Mix-and-match: another fleet's (validly signed) metadata and version copied in."""
    other = FleetKeys(f"{fleet.keys.fleet}-other")
    signers = [CryptoSigner(Ed25519PrivateKey.generate()) for _ in range(3)]
    repo = TufRepository(fleet.client, other, TufSigners(signers[0], signers[1]))
    repo.initialize([signers[2]], threshold=1)
    request, content = fleet.next_variant()
    Publisher(
        Registry(fleet.client, other, MemoryBlobStore()), fleet.manifest_signer, tuf=repo
    ).publish(request)
    names = ("targets.json", "snapshot.json", "timestamp.json")
    saved = {n: fleet.client.get(fleet.keys.tuf_metadata(n)) for n in names}
    for n in names:
        fleet.client.set(fleet.keys.tuf_metadata(n), fleet.client.get(other.tuf_metadata(n)))  # type: ignore[arg-type]
    sha = sha256_hex(content)
    fleet.client.set(fleet.keys.artifact(sha), fleet.client.get(other.artifact(sha)))  # type: ignore[arg-type]
    held = fleet.hold("another fleet", marker="UnsignedMetadataError")
    for n, raw in saved.items():
        fleet.client.set(fleet.keys.tuf_metadata(n), raw)  # type: ignore[arg-type]
    fleet.client.delete(*[k for k in fleet.client.scan_iter(count=1000) if other.owns(k.decode())])
    return AttackResult(
        "mix-and-match: a version from another fleet",
        held,
        f"fleet {other.fleet!r}'s targets, snapshot and timestamp (signed by its own keys) "
        f"and its version copied in; every edge: {fleet.evidence('UnsignedMetadataError')}",
    )


def snapshot_mix(fleet: AttackFleet) -> AttackResult:
    """Mix-and-match: the newest snapshot and timestamp with an older targets file."""
    old_targets = bytes(fleet.client.get(fleet.keys.tuf_metadata("targets.json")))  # type: ignore[arg-type]
    _, content = fleet.next_variant()
    publisher = fleet.trainer_publisher()
    assert publisher.tuf is not None
    # The new metadata and the swap in one step, so that no edge reads the new targets.
    writes = publisher.tuf.stage_version(
        fleet.client,
        sha256=sha256_hex(content),
        artifact=encode_full(content),
        manifest_wire=SignedManifest(manifest_json="{}").to_wire().decode(),
        model=fleet.model,
        version=903,
    )
    key = fleet.keys.tuf_metadata("targets.json")
    new_targets = writes[key]
    writes[key] = old_targets
    fleet.client.mset(writes)  # type: ignore[arg-type]
    held = fleet.hold("snapshot mix", marker="BadVersionNumberError")
    fleet.client.set(key, new_targets)
    return AttackResult(
        "mix-and-match: targets from one snapshot, metadata from another",
        held,
        "a new snapshot and timestamp served with the targets they replaced; every edge: "
        f"{fleet.evidence('BadVersionNumberError')}",
    )


def endless_metadata(fleet: AttackFleet, size: int = 32 * 1024 * 1024) -> AttackResult:
    """Endless data: the timestamp every edge reads on each poll replaced by 32 MiB."""
    key = fleet.keys.tuf_metadata("timestamp.json")
    saved = fleet.client.get(key)
    # One write: the stored timestamp, then zeros up to ``size`` bytes.
    fleet.client.setrange(key, size - 1, b"\0")
    sent_before = int(fleet.client.info("stats")["total_net_output_bytes"])
    held = fleet.hold("endless data", marker="DownloadLengthMismatchError")
    sent = int(fleet.client.info("stats")["total_net_output_bytes"]) - sent_before
    fleet.client.set(key, saved)  # type: ignore[arg-type]
    return AttackResult(
        "endless data: oversized metadata",
        held and sent < size // 4,
        f"timestamp.json replaced by {size >> 20} MiB; every edge: "
        f"{fleet.evidence('DownloadLengthMismatchError')}; Redis sent {sent / 1e6:.1f} MB "
        "to all its clients meanwhile",
    )


def slow_retrieval(fleet: AttackFleet) -> AttackResult:
    """Slow retrieval: the server stops answering in the middle of the proxied edge's
    metadata download."""
    assert fleet.proxy is not None and fleet.proxied_device is not None
    device, proxy = fleet.proxied_device, fleet.proxy
    proxy.stalled.clear()
    proxy.stall_large.set()
    started = time.monotonic()
    request, _ = fleet.next_variant()
    fleet.trainer_publisher().publish(request)  # new targets: every edge downloads them
    held = fleet.hold("slow retrieval", marker="SlowRetrievalError", devices=[device])
    took = time.monotonic() - started
    stalled = proxy.stalled.is_set()
    evidence = fleet.evidence("SlowRetrievalError", [device])
    proxy.stall_large.clear()
    fleet.mark()
    # Not an outage: the edge's next refresh, on a new connection, goes through.
    request, _ = fleet.next_variant()
    fleet.trainer_publisher().publish(request)
    again = fleet.hold("slow retrieval", seconds=1.0)
    return AttackResult(
        "slow retrieval: stalled download",
        stalled and held and again,
        f"{device}'s connection stalled mid-download; {device}: "
        f"{evidence} ({took:.1f}s after the publish), "
        "still serving the ordered version",
    )


def trainer_key_alone(fleet: AttackFleet) -> AttackResult:
    """Key compromise: with the trainer's keys a version is signed, listed in targets,
    announced and made the target (a ``direct`` release): no order names it."""
    request, _ = fleet.next_variant()
    published = fleet.trainer_publisher(release="direct").publish(request)
    target = fleet.client.get(fleet.keys.target(fleet.model))
    held = fleet.hold("trainer key", seconds=WATCH_S + 1)
    fleet.client.delete(fleet.keys.target(fleet.model))
    return AttackResult(
        "key compromise: the trainer's keys alone",
        held and target is not None,
        f"v{published.version} signed with the manifest and targets keys, announced and made "
        "the fleet's target: no director order names it, no edge installed it",
    )


def rotated_out_key(fleet: AttackFleet) -> AttackResult:
    """Key compromise: the targets key is rotated out (a new root); targets signed with
    the old key afterwards are refused by every edge that follows the root chain."""
    old = load_signer(fleet.keydir.file("targets"))
    root = rotate_key(fleet.client, fleet.keys, fleet.keydir, "targets")
    version = int(root.signed.version)
    followed = fleet.wait(
        lambda: all(
            s is not None and s.tuf_root_version == version
            for s in fleet.observe("rotation").values()
        ),
        15,
    )
    fleet.mark()
    saved = bytes(fleet.client.get(fleet.keys.tuf_metadata("targets.json")))  # type: ignore[arg-type]
    forged = forge_targets(
        fleet.client,
        fleet.keys,
        old,
        fleet.registry.blobs.get(fleet.authorized) + b"\2" * 9,
        fleet.online(),
    )
    held = fleet.hold("rotated-out key", marker="UnsignedMetadataError")
    restore_targets(fleet, saved, forged)
    return AttackResult(
        "key compromise: a rotated-out key",
        followed and held,
        f"targets key rotated (root v{version}, "
        f"{'followed by every edge' if followed else 'NOT followed by every edge'}); targets "
        f"signed with the old key; every edge: {fleet.evidence('UnsignedMetadataError')}",
    )


def forged_status(fleet: AttackFleet) -> AttackResult:
    """Forged device status: one device writing another's, and reports with a
    signature of the wrong device or none, as the rollout gates read them."""
    a, b = sorted(fleet.devices)[:2]
    device_b = fleet.device_client(b)
    try:
        device_b.set(fleet.keys.device(a), b"{}")
        acl = False
    except redis.exceptions.NoPermissionError:
        acl = True
    finally:
        device_b.close()
    keyring = DeviceKeyring(fleet.client, fleet.keys)
    refused: dict[str, str] = {}
    for _ in range(5):  # the real edge rewrites its report every second: read ours back
        for device, signer in (
            (a, DeviceSigner(fleet.keys.fleet, a, fleet.devices[b].private_key)),
            ("edge-phantom", None),
        ):
            status = EdgeStatus(
                device_id=device,
                fleet=fleet.keys.fleet,
                model=fleet.model,
                sha256="ab" * 32,
                state="serving",
                ts=time.time(),
            )
            pipe = fleet.client.pipeline()
            add_status(pipe, fleet.keys, status, ttl_s=60, maxlen=10_000, signer=signer)
            pipe.execute()
        _, refused = verified_statuses(fleet.client, fleet.keys, [a, "edge-phantom"], keyring)
        if a in refused:
            break
    fleet.client.delete(fleet.keys.device("edge-phantom"), fleet.keys.device_sig("edge-phantom"))
    return AttackResult(
        "forged device status",
        acl and len(refused) == 2,
        f"{b} writing {a}'s status: {'NOPERM' if acl else 'allowed'}; a report for {a} "
        f"signed with {b}'s key and an unsigned one of a phantom device: "
        + "; ".join(f"{d}: {why}" for d, why in sorted(refused.items())),
    )


def forged_feedback(fleet: AttackFleet) -> AttackResult:
    """Forged feedback: a device's own credentials writing events under another id,
    signed with its own key, and an unsigned entry; the trainer dead-letters both."""
    a, b = sorted(fleet.devices)[:2]
    since = _last_id(fleet.client, fleet.keys.deadletter)
    stream = fleet.keys.feedback_of(fleet.model)
    device_b = fleet.device_client(b)
    events = [_event(fleet, a, n) for n in range(3)]
    device_b.xadd(
        stream, feedback_fields(fleet.keys.fleet, a, fleet.devices[b].private_key, events)
    )
    device_b.xadd(stream, feedback_fields(fleet.keys.fleet, a, None, events))
    device_b.close()
    fleet.forged_events += 2  # the trainer dead-letters each entry whole

    def dead() -> list[DeadLetter]:
        return [d for d in dead_letters(fleet.client, fleet.keys, since) if ":forged:" in d.payload]

    seen = fleet.wait(lambda: len(dead()) >= 2, 20)
    reasons = sorted({d.reason for d in dead()})
    return AttackResult(
        "forged device feedback",
        seen,
        f"{b} sent events of {a} signed with its own key, and unsigned: "
        f"both entries dead-lettered ({'; '.join(reasons)})",
    )


def device_script_and_oversized(fleet: AttackFleet) -> AttackResult:
    """A device's Lua script and oversized writes: its ACL user refuses scripting and
    any write outside its own keys; an oversized event it may append is dead-lettered."""
    device = sorted(fleet.devices)[0]
    client = fleet.device_client(device)
    big = b"x" * (2 * 1024 * 1024)
    tries: dict[str, Callable[[], object]] = {
        "EVAL": lambda: client.eval("while true do end", 0),
        "SCRIPT LOAD": lambda: client.script_load("return 1"),
        "FUNCTION LOAD": lambda: client.execute_command(  # type: ignore[no-untyped-call]
            "FUNCTION", "LOAD", "#!lua name=x\nredis.register_function('f', function() end)"
        ),
        "SET 2 MiB on the target": lambda: client.set(fleet.keys.target(fleet.model), big),
        "APPEND 2 MiB to its status": lambda: client.append(fleet.keys.device(device), big),
        "XADD 2 MiB to the deltas": lambda: client.xadd(fleet.keys.deltas, {"data": big}),
    }
    refused = []
    for name, attempt in tries.items():
        try:
            attempt()
        except redis.exceptions.NoPermissionError:
            refused.append(name)
    # What the ACL cannot bound: the size of an append to the device's own feedback
    # stream. The trainer refuses it, whole, with the reason.
    since = _last_id(fleet.client, fleet.keys.deadletter)
    event = _event(fleet, device, 99, x=[0.0] * 64, note="y" * (256 * 1024))
    client.xadd(
        fleet.keys.feedback_of(fleet.model),
        feedback_fields(fleet.keys.fleet, device, fleet.devices[device].private_key, [event]),
    )
    client.close()
    fleet.forged_events += 1

    def oversize() -> bool:
        return any("oversize" in d.reason for d in dead_letters(fleet.client, fleet.keys, since))

    dead = fleet.wait(oversize, 20)
    return AttackResult(
        "a device's Lua script and oversized writes",
        len(refused) == len(tries) and dead,
        f"NOPERM for {', '.join(refused)}; a 256 KiB event appended to its own feedback "
        f"stream {'dead-lettered as oversize' if dead else 'NOT dead-lettered'}",
    )


def plaintext_production(fleet: AttackFleet) -> AttackResult:
    """Plaintext in production: an edge told to reach a remote Redis without TLS."""
    config = fleet.workdir / "plaintext-edge.toml"
    config.write_text(
        "\n".join(
            [
                'mode = "production"',
                'device_id = "edge-plaintext"',
                f'fleet = "{fleet.keys.fleet}"',
                'redis_url = "redis://:secret@198.51.100.7:6379/0"',
                f'public_key = "{fleet.workdir / "keys" / "signing.pub"}"',
                f'state_dir = "{fleet.workdir / "edge-plaintext"}"',
                "",
            ]
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = (proc.stderr + proc.stdout).strip().splitlines()
    line = next((s for s in said if "plaintext" in s), said[-1] if said else "")
    return AttackResult(
        "plaintext in production",
        proc.returncode != 0 and "plaintext" in line and "secret" not in proc.stderr,
        f"an edge in production with redis:// to a remote host: exit {proc.returncode}, "
        f"{line.strip()[:160]}",
    )


#: The scenario's attacks, in the order it runs them.
ATTACKS: list[Callable[[AttackFleet], AttackResult]] = [
    unsigned_announcement,
    wrong_key,
    replayed_announcement,
    raw_rollback_write,
    replayed_order,
    freeze,
    other_fleet,
    snapshot_mix,
    endless_metadata,
    slow_retrieval,
    trainer_key_alone,
    rotated_out_key,
    forged_status,
    forged_feedback,
    device_script_and_oversized,
    plaintext_production,
]


def run_attack(fleet: AttackFleet, attack: Callable[[AttackFleet], AttackResult]) -> AttackResult:
    """One attack; an attack that fails to run is reported as not stopped, with why."""
    fleet.mark()
    try:
        return attack(fleet)
    except Exception as e:
        logger.exception("attack %s did not run", attack.__name__)
        return AttackResult(attack.__name__, False, f"did not run: {type(e).__name__}: {e}")
