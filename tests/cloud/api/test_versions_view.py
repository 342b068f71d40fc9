"""The one read path for versions (cloud/api/views/versions.py) over a real registry:
listing, every kind of ref, signature checks that surface as a flag, deltas and diffs."""

from __future__ import annotations

import json

import pytest

from cloud.api.views.versions import ModelNotFound, VersionsView
from cloud.data.replay import DataOptions, TrainerData
from cloud.export.tflite_file import TFLiteFile
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.versions import DirBlobStore, Registry, VersionNotFound
from shared.delta import apply_patch
from shared.messages import Explanation, SignedManifest
from shared.signing import Signer, Verifier, write_keypair


def one_weight_changed(content: bytes) -> bytes:
    """The same model with one int8 weight of f1 moved by a step: a real, valid child."""
    parent = TFLiteFile.read(content)
    f1 = parent.layers[2].weight
    values = parent.values(f1.name)
    values[0, 0] += 1 if values[0, 0] < 127 else -1
    return parent.with_values({f1.name: values})


@pytest.fixture
def registry(redis_client, keys, signing_dir, tmp_path, exported, parts) -> Registry:
    """v1 (the session's export, labelled stable) and v2 (one weight changed), and the
    seed holdout as the evaluation data."""
    registry = Registry(redis_client, keys, DirBlobStore(tmp_path / "blobs"))
    publisher = Publisher(registry, Signer.from_file(signing_dir / "signing.key"))
    common = {
        "num_features": 64,
        "labels": parts.seed_train.labels,
        "probe": exported.probe,
        "runtime": exported.runtime,
    }
    v1 = publisher.publish(
        PublishRequest(
            "digits",
            exported.content,
            explanation=Explanation(trigger="bootstrap", summary="first"),
            expected_parent=None,
            **common,
        )
    )
    publisher.publish(
        PublishRequest(
            "digits",
            one_weight_changed(exported.content),
            explanation=Explanation(trigger="count", summary="second"),
            expected_parent=v1.sha256,
            **common,
        )
    )
    registry.set_label("digits", "stable", 1)
    options = DataOptions.flat(
        "digits", 10, 64, replay_capacity=100, recent_window=10, recent_train=0
    )
    data = TrainerData(redis_client, keys, options)
    data.seed(parts.seed_holdout.X, parts.seed_holdout.y, holdout=True, seed=0)
    return registry


@pytest.fixture
def view(registry, signing_dir) -> VersionsView:
    return VersionsView(registry, Verifier.from_file(signing_dir / "signing.pub"))


def test_models_and_versions_are_listed(view, registry):
    (model,) = view.list_models().models
    assert (model.name, model.versions, model.latest.version) == ("digits", 2, 2)
    assert model.labels["stable"] == 1
    versions = view.list_versions("digits").versions
    assert [(v.version, v.parent_version, v.trigger) for v in versions] == [
        (1, None, "bootstrap"),
        (2, 1, "count"),
    ]
    assert [v.version for v in view.list_versions("digits", limit=1).versions] == [2]
    with pytest.raises(ModelNotFound):
        view.list_versions("cats")


def test_every_kind_of_ref_names_the_same_version(view, registry):
    sha = registry.get("digits", 2).sha256
    for ref in ("2", "v2", "latest", sha, sha[:12]):
        found = view.read_version("digits", ref)
        assert (found.version.version, found.manifest.sha256) == (2, sha), ref
        assert found.signature_verified
    assert view.read_version("digits", "stable").version.version == 1
    assert view.read_explanation("digits", "v1").explanation.summary == "first"


def test_unknown_refs_and_models_are_not_found(view):
    for ref in ("3", "v0", "beta", "ffffff" * 2):
        with pytest.raises(VersionNotFound):
            view.read_version("digits", ref)
    with pytest.raises(ModelNotFound):
        view.read_version("cats", "1")


def test_a_manifest_signed_by_another_key_is_served_unverified(registry, tmp_path):
    other = tmp_path / "other"
    write_keypair(other)
    view = VersionsView(registry, Verifier.from_file(other / "signing.pub"))
    assert not view.read_version("digits", "2").signature_verified
    assert not view.read_explanation("digits", "2").signature_verified
    assert not VersionsView(registry, None).read_version("digits", "2").signature_verified


def test_a_tampered_manifest_is_served_unverified(view, registry, redis_client, keys):
    sha = registry.get("digits", 2).sha256
    signed = SignedManifest.from_wire(redis_client.get(keys.manifest(sha)))
    body = json.loads(signed.manifest_json)
    body["metrics"]["recent_accuracy"] = 1.0
    forged = signed.model_copy(update={"manifest_json": json.dumps(body)})
    redis_client.set(keys.manifest(sha), forged.to_wire())

    found = view.read_version("digits", "2")

    assert found.manifest.metrics["recent_accuracy"] == 1.0 and not found.signature_verified
    assert view.read_version("digits", "1").signature_verified  # the others still verify


def test_a_delta_rebuilds_the_target(view, registry):
    v1, v2 = registry.versions("digits")
    patch, target = view.read_delta("digits", v1.sha256, "latest")
    assert target == v2.sha256
    child = registry.content("digits", 2)
    assert apply_patch(registry.content("digits", 1), patch, max_size=len(child)) == child
    assert len(patch) < len(child) // 10  # one changed byte: a patch, not the file


def test_a_diff_measures_both_versions_on_the_same_data(view, parts):
    diff = view.diff_versions("digits", "1", "2")
    assert diff.earlier_samples == len(parts.seed_holdout.y) and diff.recent_samples == 0
    assert diff.bytes_differing == 1 and diff.weights.bytes_changed == 1
    assert [layer.name for layer in diff.weights.layers if layer.bytes_changed] == ["f1"]
    assert diff.b_descends_from_a and not view.diff_versions("digits", "2", "1").b_descends_from_a
    # one step of one weight: the two score (almost) alike on the same samples
    assert diff.a.metrics.earlier.accuracy == pytest.approx(
        diff.b.metrics.earlier.accuracy, abs=0.01
    )
