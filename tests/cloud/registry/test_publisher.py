"""Publishing: signed manifests that verify, artifacts by hash, numbered versions, announcements."""

from __future__ import annotations

import pytest

from cloud.registry.publisher import (
    Publisher,
    PublishError,
    PublishNotReplicated,
    PublishRequest,
    StaleParent,
    VersionNotFound,
)
from cloud.registry.versions import DirBlobStore, Registry
from shared.codec import decode_full, sha256_hex
from shared.errors import SignatureError
from shared.messages import DeltaAnnouncement, Explanation
from shared.signing import Signer, Verifier


@pytest.fixture
def publisher(redis_client, keys, signing_dir, tmp_path) -> Publisher:
    registry = Registry(redis_client, keys, DirBlobStore(tmp_path / "blobs"))
    return Publisher(registry, Signer.from_file(signing_dir / "signing.key"))


def publish(publisher, content, **kw):
    args = {
        "num_features": 64,
        "labels": [str(i) for i in range(10)],
        "runtime": "ai-edge-litert test",
        "metrics": {"recent_accuracy": 0.9},
        "explanation": Explanation(trigger="test", summary="s"),
        **kw,
    }
    return publisher.publish(PublishRequest("digits", content, **args))


def test_published_version_verifies_and_is_announced(
    publisher, redis_client, keys, signing_dir, exported
):
    p = publish(publisher, exported.content, probe=exported.probe, expected_parent=None)
    assert p.version == 1 and p.sha256 == exported.sha256
    verifier = Verifier.from_file(signing_dir / "signing.pub")
    signed = publisher.signed_manifest(p.sha256)
    verifier.verify(signed.manifest_json.encode(), signed.signature)
    m = signed.manifest()
    assert (m.version, m.sha256, m.size, m.parent_sha256) == (
        1,
        exported.sha256,
        len(exported.content),
        None,
    )
    assert m.explanation.trigger == "test" and m.metrics["recent_accuracy"] == 0.9
    with pytest.raises(SignatureError):
        verifier.verify(
            signed.manifest_json.replace('"version":1', '"version":9').encode(), signed.signature
        )
    ((_, fields),) = redis_client.xrange(keys.deltas)
    ann = DeltaAnnouncement.from_wire(fields[b"data"])
    assert (ann.version, ann.sha256, ann.manifest_key) == (1, p.sha256, keys.manifest(p.sha256))
    full = ann.full_payload()
    blob = redis_client.get(full.key)
    assert full.size == len(blob) and sha256_hex(decode_full(blob)) == p.sha256
    assert publisher.content(p.sha256) == exported.content


def test_versions_count_up_with_parents(publisher, exported):
    first = publish(publisher, exported.content, probe=exported.probe)
    second = publish(
        publisher, exported.content + b"\0", probe=exported.probe, expected_parent=first.sha256
    )
    m = second.manifest
    assert (m.version, m.parent_version, m.parent_sha256) == (2, 1, first.sha256)
    version, sha, signed = publisher.latest("digits")
    assert (version, sha) == (2, second.sha256) and signed.manifest().version == 2
    assert publisher.versions("digits") == [(1, first.sha256), (2, second.sha256)]


def test_stale_parent_and_republish_are_refused(publisher, exported, redis_client, keys):
    first = publish(publisher, exported.content, probe=exported.probe)
    with pytest.raises(StaleParent):
        publish(publisher, exported.content + b"\1", probe=exported.probe, expected_parent=None)
    with pytest.raises(PublishError, match="already"):
        publish(publisher, exported.content, probe=exported.probe)
    assert publisher.versions("digits") == [(1, first.sha256)]
    assert redis_client.xlen(keys.deltas) == 1


def test_unknown_versions(publisher):
    assert publisher.latest("digits") is None
    with pytest.raises(VersionNotFound):
        publisher.content("0" * 64)


def _publisher(publisher: Publisher, **kw) -> Publisher:
    return Publisher(publisher.registry, publisher.signer, **kw)


def test_direct_release_makes_each_version_the_fleet_target(
    publisher, exported, redis_client, keys
):
    assert publisher.release == "direct"  # the default
    first = publish(publisher, exported.content, probe=exported.probe)
    assert first.target_set and redis_client.get(keys.target("digits")) == first.sha256.encode()
    second = publish(publisher, exported.content + b"\0", probe=exported.probe)
    assert redis_client.get(keys.target("digits")) == second.sha256.encode()


def test_manual_release_leaves_the_target_alone(publisher, exported, redis_client, keys):
    manual = _publisher(publisher, release="manual")
    first = publish(manual, exported.content, probe=exported.probe)
    assert not first.target_set and redis_client.get(keys.target("digits")) is None
    redis_client.set(keys.target("digits"), first.sha256)  # an operator's or a rollout's choice
    second = publish(manual, exported.content + b"\0", probe=exported.probe)
    assert redis_client.get(keys.target("digits")) == first.sha256.encode()
    assert manual.versions("digits") == [(1, first.sha256), (2, second.sha256)]  # registered
    ((_, fields),) = redis_client.xrevrange(keys.deltas, count=1)
    assert DeltaAnnouncement.from_wire(fields[b"data"]).sha256 == second.sha256  # and announced


def test_a_rollout_in_progress_keeps_a_direct_publish_from_moving_the_target(
    publisher, exported, redis_client, keys
):
    first = publish(publisher, exported.content, probe=exported.probe)
    redis_client.set(keys.active_rollout("digits"), "r1")
    second = publish(publisher, exported.content + b"\0", probe=exported.probe)
    assert (
        not second.target_set and redis_client.get(keys.target("digits")) == first.sha256.encode()
    )
    assert publisher.versions("digits")[-1] == (2, second.sha256)
    redis_client.delete(keys.active_rollout("digits"))
    third = publish(publisher, exported.content + b"\1", probe=exported.probe)
    assert third.target_set and redis_client.get(keys.target("digits")) == third.sha256.encode()


@pytest.mark.redis_cluster
def test_a_rollout_started_during_a_publish_retries_it_without_the_target(
    publisher, exported, redis_client, keys, monkeypatch
):
    first = publish(publisher, exported.content, probe=exported.probe)
    make_patches = publisher._patches
    started: list[bool] = []

    def meanwhile(bases, content):
        if not started:  # another process creates a rollout between the reads and EXEC
            started.append(redis_client.set(keys.active_rollout("digits"), "r1"))
        return make_patches(bases, content)

    monkeypatch.setattr(publisher, "_patches", meanwhile)
    second = publish(publisher, exported.content + b"\0", probe=exported.probe)
    assert started and not second.target_set
    assert redis_client.get(keys.target("digits")) == first.sha256.encode()


def test_a_publish_no_replica_confirms_does_not_count(publisher, exported, redis_client, keys):
    """One server has no replica: WAIT 1 gets 0 in time. The version is whole on the
    master and announced, but reported as not replicated (docs: "A publish during a
    failover")."""
    waiting = _publisher(publisher, wait_replicas=1, wait_ms=50)
    with pytest.raises(PublishNotReplicated, match="0 of 1 replica") as raised:
        publish(waiting, exported.content, probe=exported.probe)
    assert raised.value.published is not None and raised.value.published.version == 1
    assert waiting.versions("digits") == [(1, exported.sha256)]
    assert redis_client.xlen(keys.deltas) == 1
    with pytest.raises(PublishNotReplicated, match="0 of 1"):
        waiting.confirm("digits", exported.sha256)
    with pytest.raises(PublishNotReplicated, match="not on the master"):
        waiting.confirm("digits", "0" * 64)
    # the confirmation rewrote the record with its own bytes, nothing else
    assert waiting.registry.get("digits", 1).sha256 == exported.sha256


def test_a_publish_needs_what_was_written_before_it(publisher, exported, redis_client, keys):
    """A key the version needs (the trainer's weights) missing on the master, as after a
    failover that lost it: nothing is published."""
    weights = keys.weights(exported.sha256)
    with pytest.raises(PublishNotReplicated, match="weights"):
        publish(publisher, exported.content, probe=exported.probe, requires=(weights,))
    assert publisher.versions("digits") == [] and redis_client.xlen(keys.deltas) == 0
    redis_client.set(weights, b"w")
    p = publish(publisher, exported.content, probe=exported.probe, requires=(weights,))
    assert publisher.versions("digits") == [(1, p.sha256)]
