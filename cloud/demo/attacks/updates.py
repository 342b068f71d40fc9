"""Attacks on what devices serve: arbitrary installation, rollback, freeze, mix-and-match,
endless data, slow retrieval, key compromise. Each is stopped when every edge keeps
serving the authorized version and reports the refusal the design promises.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner

from cloud.demo.attacks.fleet import WATCH_S, AttackFleet, AttackResult
from cloud.demo.attacks.forge import (
    announce,
    forge_targets,
    restore_targets,
    signed_variant,
)
from cloud.registry.publisher import Publisher
from cloud.registry.tuf_keys import rotate_key
from cloud.registry.tuf_repo import TufRepository, TufSigners, load_signer
from cloud.registry.versions import MemoryBlobStore, Registry
from cloud.rollout.director import Director
from shared.codec import encode_full, sha256_hex
from shared.director import FLEET_SCOPE
from shared.keys import FleetKeys
from shared.messages import DeltaAnnouncement, SignedManifest
from shared.rollouts import AssignmentNotice
from shared.signing import Signer, generate_keypair

logger = logging.getLogger(__name__)


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
    forged = fleet.client.hget(fleet.keys.director(fleet.model), FLEET_SCOPE)
    violations = len(fleet.violations)
    ordered = fleet.hold("wrong key", marker="trusts key")
    # The fleet's own director drops an order no key of its root signed when its
    # controller renews the orders; when that comes before an edge's poll, no edge had
    # the order to refuse, and what stopped it is that drop (nothing served meanwhile).
    dropped = fleet.client.hget(fleet.keys.director(fleet.model), FLEET_SCOPE) != forged
    if not ordered and dropped:
        ordered = len(fleet.violations) == violations
        refused_order = "the fleet's director dropped the order before an edge read it"
    else:
        refused_order = fleet.evidence("trusts key")
    fleet.client.delete(fleet.keys.director(fleet.model))
    fleet.client.hset(fleet.keys.director(fleet.model), mapping=saved_orders)  # type: ignore[arg-type]
    restore_targets(fleet, saved_targets, version)
    return AttackResult(
        "arbitrary installation: signed by a wrong key",
        listed and ordered,
        f"v902 signed by an unknown manifest key, targets v{version} signed by an unknown "
        "key, an order signed by a director key the root does not name; every edge: "
        f"{evidence}; {refused_order}",
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
