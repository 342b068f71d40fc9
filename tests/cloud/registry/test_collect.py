"""Collecting old versions' payloads: the last N, labelled, assigned, pinned and served stay."""

from __future__ import annotations

import json

from cloud.registry.collect import VersionCollector
from cloud.registry.publisher import Publisher
from cloud.registry.versions import DirBlobStore, Registry
from cloud.rollout.controller import RolloutController
from cloud.rollout.loop import ControllerLoop
from shared.codec import decode_full
from shared.messages import SignedManifest
from shared.signing import Signer, Verifier
from tests.cloud.registry.test_publisher import publish


def variants(content: bytes, n: int) -> list[bytes]:
    """``n`` files of one length that differ in their last byte (patchable to each other)."""
    return [content[:-1] + bytes([i]) for i in range(n)]


def test_old_payloads_go_and_the_wanted_ones_stay(
    redis_client, keys, signing_dir, tmp_path, exported
):
    registry = Registry(redis_client, keys, DirBlobStore(tmp_path / "blobs"))
    publisher = Publisher(registry, Signer.from_file(signing_dir / "signing.key"), release="manual")
    shas = []
    for content in variants(exported.content, 7):
        shas.append(publish(publisher, content, probe=exported.probe).sha256)
        redis_client.set(keys.weights(shas[-1]), b"weights")  # what the trainer stores
    v = dict(enumerate(shas, start=1))
    registry.set_label("digits", "stable", 1)
    redis_client.hset(keys.pins("digits"), "pi-1", v[2])
    redis_client.hset(keys.assignments("digits"), "pi-2", v[3])
    redis_client.hset(keys.fleet_counts, mapping={"mv:digits|v4": 3, "mv:other|v5": 1})
    patch_to_5 = keys.patch(v[4], v[5])
    assert redis_client.exists(patch_to_5)  # the publish of v5 patched from its parent

    collected = VersionCollector(registry, keep_last=2).collect()

    assert [c.versions for c in collected] == [[v[5]]]
    gone = [keys.artifact(v[5]), keys.weights(v[5]), patch_to_5, keys.patch(v[5], v[6])]
    assert redis_client.exists(*gone) == 0
    for n in (1, 2, 3, 4, 6, 7):  # labelled, pinned, assigned, served, the last two
        assert redis_client.exists(keys.artifact(v[n]), keys.weights(v[n])) == 2, n
    # the version is still listed, explained and readable from the blob store
    assert not redis_client.exists(keys.manifest(v[5]))  # archived there
    assert registry.get("digits", 5).sha256 == v[5]
    assert registry.signed_manifest("digits", 5).manifest().version == 5
    assert publisher.signed_manifest(v[5]).manifest().sha256 == v[5]
    assert registry.content("digits", 5) == variants(exported.content, 7)[4]
    assert VersionCollector(registry, keep_last=2).collect() == []  # nothing left

    # pinning the collected version brings its file back for the edges, in the same transaction
    RolloutController(redis_client, keys, registry).pin("digits", "pi-9", "5", by="ops")
    blob = redis_client.get(keys.artifact(v[5]))
    assert blob is not None and decode_full(blob) == variants(exported.content, 7)[4]
    signed = SignedManifest.from_wire(redis_client.get(keys.manifest(v[5])))
    Verifier.from_file(signing_dir / "signing.pub").verify(
        signed.manifest_json.encode(), signed.signature
    )
    redis_client.hdel(keys.pins("digits"), "pi-1")  # v2 is wanted no more
    assert [c.versions for c in VersionCollector(registry, keep_last=2).collect()] == [[v[2]]]


def test_the_active_rollouts_versions_stay(redis_client, keys, signing_dir, tmp_path, exported):
    registry = Registry(redis_client, keys, DirBlobStore(tmp_path / "blobs"))
    publisher = Publisher(registry, Signer.from_file(signing_dir / "signing.key"), release="manual")
    shas = [
        publish(publisher, c, probe=exported.probe).sha256 for c in variants(exported.content, 4)
    ]
    redis_client.set(keys.active_rollout("digits"), "r1")
    redis_client.set(keys.rollout("r1"), json.dumps({"from_sha256": shas[0], "to_sha256": shas[1]}))
    collector = VersionCollector(registry, keep_last=1)
    assert [c.versions for c in collector.collect()] == [[shas[2]]]
    redis_client.delete(keys.active_rollout("digits"))
    assert [c.versions for c in collector.collect()] == [[shas[0], shas[1]]]


def test_the_controller_loop_collects_when_due(redis_client, keys, signing_dir, tmp_path, exported):
    registry = Registry(redis_client, keys, DirBlobStore(tmp_path / "blobs"))
    publisher = Publisher(registry, Signer.from_file(signing_dir / "signing.key"), release="manual")
    shas = [
        publish(publisher, c, probe=exported.probe).sha256 for c in variants(exported.content, 3)
    ]
    collector = VersionCollector(registry, keep_last=1, interval_s=3600)
    loop = ControllerLoop(RolloutController(redis_client, keys, registry), 1.0, collector=collector)
    loop._collect()
    assert redis_client.exists(*(keys.artifact(s) for s in shas)) == 1  # the newest
    publish(publisher, variants(exported.content, 4)[3], probe=exported.probe)
    loop._collect()  # not due again for an hour
    assert redis_client.exists(keys.artifact(shas[2]))
