"""The registry: blob stores, versions, labels, lineage, deltas, base choice, and restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from cloud.registry.blobs import BlobNotFound, BlobStore, DirBlobStore, MemoryBlobStore
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.versions import (
    LATEST,
    LabelError,
    PatchUnavailable,
    Registry,
    UnknownBase,
    VersionNotFound,
)
from shared.codec import decode_full, sha256_hex
from shared.delta import apply_patch
from shared.errors import IntegrityError
from shared.keys import FleetKeys
from shared.messages import (
    DeltaAnnouncement,
    EdgeStatus,
    Explanation,
    ProbeSet,
)
from shared.signing import Signer, Verifier

MODEL = "digits"
PROBE = ProbeSet(inputs=[[0.0] * 4], expected=[[0.5, 0.5]])


def model_file(seed: int, size: int = 6000, base: bytes | None = None) -> bytes:
    """A stand-in model file: random bytes, or ``base`` with a few bytes nudged."""
    rng = np.random.default_rng(seed)
    if base is None:
        return rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    out = np.frombuffer(base, np.uint8).copy()
    where = rng.choice(len(out), 40, replace=False)
    out[where] += 1
    return out.tobytes()


# -- blob stores: one contract, every implementation ----------------------------


class BlobStoreContract:
    def make(self, tmp_path: Path) -> BlobStore:
        raise NotImplementedError

    def test_put_get_has(self, tmp_path: Path) -> None:
        store = self.make(tmp_path)
        sha = store.put(b"weights")
        assert sha == sha256_hex(b"weights")
        assert store.has(sha) and store.get(sha) == b"weights"
        assert store.put(b"weights") == sha  # idempotent

    def test_missing_and_malformed_names(self, tmp_path: Path) -> None:
        store = self.make(tmp_path)
        assert not store.has("0" * 64)
        with pytest.raises(BlobNotFound):
            store.get("0" * 64)
        with pytest.raises(BlobNotFound, match="not a sha256"):
            store.get("../../etc/passwd")
        assert not store.has("../x")


class TestDirBlobStore(BlobStoreContract):
    def make(self, tmp_path: Path) -> BlobStore:
        return DirBlobStore(tmp_path / "blobs")

    def test_layout_and_no_temp_files(self, tmp_path: Path) -> None:
        store = DirBlobStore(tmp_path / "blobs")
        sha = store.put(b"x" * 100)
        assert (tmp_path / "blobs" / sha[:2] / sha[2:]).read_bytes() == b"x" * 100
        assert [p.name for p in (tmp_path / "blobs" / sha[:2]).iterdir()] == [sha[2:]]

    def test_a_damaged_blob_is_refused_and_rewritten_by_put(self, tmp_path: Path) -> None:
        store = DirBlobStore(tmp_path / "blobs")
        sha = store.put(b"model bytes")
        store.path(sha).write_bytes(b"model bytez")
        with pytest.raises(IntegrityError):
            store.get(sha)
        store.put(b"model bytes")
        assert store.get(sha) == b"model bytes"


class TestMemoryBlobStore(BlobStoreContract):
    def make(self, tmp_path: Path) -> BlobStore:
        return MemoryBlobStore()


# -- the registry ---------------------------------------------------------------


@pytest.fixture
def registry(redis_client: redis.Redis, keys: FleetKeys, tmp_path: Path) -> Registry:
    return Registry(redis_client, keys, DirBlobStore(tmp_path / "blobs"), patch_ttl_s=600)


def make_publisher(registry: Registry, signing_dir: Path, **kw: int) -> Publisher:
    signer = Signer.from_file(signing_dir / "signing.key")
    return Publisher(registry, signer, **kw)


def request(content: bytes, **kw: Any) -> PublishRequest:
    return PublishRequest(
        MODEL, content, num_features=4, labels=["a", "b"], probe=PROBE, runtime="test", **kw
    )


def publish(publisher: Publisher, content: bytes, trigger: str = "count"):
    explanation = Explanation(trigger=trigger, summary="s")
    return publisher.publish(
        request(content, metrics={"recent_accuracy": 0.9}, explanation=explanation)
    )


@pytest.fixture
def publisher(registry: Registry, signing_dir: Path) -> Publisher:
    return make_publisher(registry, signing_dir)


@pytest.fixture
def three(publisher: Publisher) -> list[bytes]:
    """v1, v2, v3 of MODEL, each a small edit of the one before."""
    files = [model_file(1)]
    files.append(model_file(2, base=files[0]))
    files.append(model_file(3, base=files[1]))
    for i, f in enumerate(files):
        publish(publisher, f, trigger="bootstrap" if i == 0 else "drift")
    return files


def test_versions_are_listed_with_parents_labels_and_headlines(
    registry: Registry, three: list[bytes]
) -> None:
    rows = registry.versions(MODEL)
    shas = [sha256_hex(f) for f in three]
    assert [(r.version, r.sha256, r.parent_sha256) for r in rows] == [
        (1, shas[0], None),
        (2, shas[1], shas[0]),
        (3, shas[2], shas[1]),
    ]
    assert [r.labels for r in rows] == [[], [], [LATEST]]
    assert rows[0].trigger == "bootstrap" and rows[2].metrics == {"recent_accuracy": 0.9}
    assert rows[2].size == len(three[2]) and rows[2].created_at > 0
    assert [r.version for r in registry.versions(MODEL, limit=2)] == [2, 3]
    assert registry.models() == [MODEL]
    latest = registry.latest(MODEL)
    assert latest is not None and latest.version == 3


def test_a_version_is_found_by_number_label_sha_or_prefix(
    registry: Registry, three: list[bytes]
) -> None:
    sha2 = sha256_hex(three[1])
    for ref in (2, "2", "v2", sha2, sha2[:10]):
        assert registry.get(MODEL, ref).sha256 == sha2, ref
    assert registry.get(MODEL, LATEST).version == 3
    for ref in (7, "v7", "0" * 64, "nolabel", "abc", "ffffff"):
        with pytest.raises(VersionNotFound):
            registry.get(MODEL, ref)
    with pytest.raises(VersionNotFound, match="invalid model"):
        registry.get("no such model!", 1)
    assert registry.content(MODEL, "v2") == three[1]
    assert registry.signed_manifest(MODEL, 2).manifest().sha256 == sha2
    assert registry.manifest(MODEL, LATEST).version == 3


def test_lineage_goes_back_to_the_first_version(registry: Registry, three: list[bytes]) -> None:
    assert [r.version for r in registry.lineage(MODEL, LATEST)] == [3, 2, 1]
    assert [r.version for r in registry.lineage(MODEL, 1)] == [1]


def test_labels_move_and_latest_is_reserved(
    registry: Registry, publisher: Publisher, three: list[bytes]
) -> None:
    assert registry.set_label(MODEL, "stable", 1).labels == ["stable"]
    registry.set_label(MODEL, "canary", "v3")
    assert {k: v.version for k, v in registry.labels(MODEL).items()} == {
        "canary": 3,
        "latest": 3,
        "stable": 1,
    }
    registry.set_label(MODEL, "stable", 2)  # moves
    assert registry.get(MODEL, "stable").version == 2
    assert registry.get(MODEL, 3).labels == ["canary", "latest"]
    assert registry.get(MODEL, 1).labels == []
    assert registry.remove_label(MODEL, "canary") and not registry.remove_label(MODEL, "canary")
    for bad in (LATEST, "v3", "Stable", "", "x" * 40):
        with pytest.raises(LabelError):
            registry.set_label(MODEL, bad, 1)
    with pytest.raises(VersionNotFound):
        registry.set_label(MODEL, "stable", 9)
    publish(publisher, model_file(4, base=three[2]))  # a publish moves latest, nothing else
    assert registry.get(MODEL, LATEST).version == 4 and registry.get(MODEL, "stable").version == 2


def test_delta_builds_caches_and_refuses(
    registry: Registry, publisher: Publisher, three: list[bytes], redis_client: redis.Redis
) -> None:
    sha1, sha3 = sha256_hex(three[0]), sha256_hex(three[2])
    patch = registry.delta(MODEL, sha1, sha3)
    assert apply_patch(three[0], patch, 1 << 20) == three[2]
    assert len(patch) < len(three[2]) // 4
    key = registry.keys.patch(sha1, sha3)
    assert redis_client.get(key) == patch and 0 < redis_client.ttl(key) <= 600
    assert registry.delta(MODEL, "v1", LATEST) == patch  # refs work, and the cache answers
    with pytest.raises(UnknownBase, match="fetch the full file"):
        registry.delta(MODEL, sha256_hex(b"not a version"), sha3)
    longer = publish(publisher, three[2] + b"\0")
    with pytest.raises(PatchUnavailable, match="equal lengths"):
        registry.delta(MODEL, sha1, longer.sha256)


def test_versions_published_before_records_still_read(
    registry: Registry, three: list[bytes], redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A fleet upgraded from whole-file publishing: no records, no blobs, only
    the version set, manifests and artifacts."""
    redis_client.delete(registry.keys.version_records(MODEL))
    bare = Registry(redis_client, registry.keys, DirBlobStore(tmp_path / "empty"))
    assert [r.version for r in bare.versions(MODEL)] == [1, 2, 3]
    assert [r.version for r in bare.lineage(MODEL, 3)] == [3, 2, 1]
    assert bare.content(MODEL, 1) == three[0]


def test_everything_survives_a_restart_of_redis_and_of_the_process(
    redis_server, registry: Registry, three: list[bytes], signing_dir: Path, tmp_path: Path
) -> None:
    registry.set_label(MODEL, "stable", 2)
    before = registry.versions(MODEL)
    redis_server.restart()
    client = redis.Redis.from_url(redis_server.url)
    try:
        fresh = Registry(client, FleetKeys(registry.keys.fleet), DirBlobStore(tmp_path / "blobs"))
        assert fresh.versions(MODEL) == before
        assert fresh.get(MODEL, "stable").version == 2 and fresh.get(MODEL, LATEST).version == 3
        verifier = Verifier.from_file(signing_dir / "signing.pub")
        for i, f in enumerate(three, start=1):
            assert fresh.blobs.get(sha256_hex(f)) == f
            signed = fresh.signed_manifest(MODEL, i)
            verifier.verify(signed.manifest_json.encode(), signed.signature)
        # A new publisher carries on the numbering and the lineage.
        p4 = publish(make_publisher(fresh, signing_dir), model_file(4, base=three[2]))
        assert p4.version == 4 and p4.manifest.parent_version == 3
        assert [r.version for r in fresh.lineage(MODEL, LATEST)] == [4, 3, 2, 1]
    finally:
        client.close()


# -- which bases get a patch -------------------------------------------------------


def report(client: redis.Redis, keys: FleetKeys, device: str, sha: str, model: str = MODEL) -> None:
    status = EdgeStatus(device_id=device, fleet=keys.fleet, model=model, sha256=sha)
    client.set(keys.device(device), status.to_wire())
    client.zadd(keys.devices, {device: status.ts})


def test_the_publisher_lists_patches_for_the_parent_and_the_bases_devices_report(
    registry: Registry, publisher: Publisher, three: list[bytes], redis_client: redis.Redis
) -> None:
    keys = registry.keys
    sha1, sha2, _ = (sha256_hex(f) for f in three)
    odd = publish(publisher, model_file(9, size=5000)).sha256  # v4: another length
    for device, sha in [("a", sha1), ("b", sha1), ("c", sha2), ("d", odd), ("e", "f" * 64)]:
        report(redis_client, keys, device, sha)
    report(redis_client, keys, "f", sha2, model="other")
    redis_client.set(keys.device("g"), b"{not json")
    redis_client.zadd(keys.devices, {"g": 1.0, "gone": 2.0})

    target = model_file(5, base=three[2])
    # The parent, v4, has another length: no patch, and it does not use up the cap.
    capped = Publisher(registry, publisher.signer, max_patches=2)
    published = publish(capped, target)
    patches = {p.base_sha256: p for p in published.payloads if p.encoding == "patch"}
    assert set(patches) == {sha1, sha2}  # v4 (length), f*64 (unknown) and v3 (nobody) get none
    ((_, fields),) = redis_client.xrevrange(keys.deltas, count=1)
    announcement = DeltaAnnouncement.from_wire(fields[b"data"])
    assert announcement.payloads == published.payloads
    full = announcement.full_payload()
    assert decode_full(redis_client.get(full.key)) == target
    for base, payload in patches.items():
        blob = redis_client.get(payload.key)
        assert payload.size == len(blob) and 0 < redis_client.ttl(payload.key) <= 600
        assert apply_patch(registry.content(MODEL, base), blob, 1 << 20) == target
        assert payload.size < full.size // 4
    # sha1 is served by more devices than sha2, so it comes first.
    assert [p.base_sha256 for p in announcement.payloads[1:]] == [sha1, sha2]


def test_the_parent_comes_first_and_the_cap_holds(
    registry: Registry, signing_dir: Path, three: list[bytes], redis_client: redis.Redis
) -> None:
    sha1, sha2, sha3 = (sha256_hex(f) for f in three)
    for device, sha in [("a", sha1), ("b", sha1), ("c", sha2)]:
        report(redis_client, registry.keys, device, sha)
    capped = make_publisher(registry, signing_dir, max_patches=2)
    published = capped.publish(request(model_file(5, base=three[2])))
    assert [p.base_sha256 for p in published.payloads] == [None, sha3, sha1]
    none = make_publisher(registry, signing_dir, max_patches=0)
    published = none.publish(request(model_file(6, base=three[2])))
    assert [p.encoding for p in published.payloads] == ["full"]
