"""TUF between cloud and edge: a version published into the fleet's TUF repository in
a real redis-server reaches an edge's ngclient Updater, and what TUF defends against
(unlisted versions, tampered files, oversized files, replayed or frozen metadata,
a key that is not the targets key) is refused."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
import redis
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, TargetFile, Targets, Timestamp

from cloud.demo.stall_proxy import StallProxy
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.tuf_repo import TufRepository, TufSigners
from cloud.registry.versions import MemoryBlobStore, Registry
from edge.daemon import EdgeDaemon
from edge.tuf_client import (
    MOVED_ON_RETRIES,
    NotInTargets,
    RedisFetcher,
    TufClient,
    TufRefused,
)
from shared.codec import decode_full, sha256_hex
from shared.errors import ConfigError
from shared.keys import FleetKeys
from shared.messages import ProbeSet
from shared.signing import Signer, generate_keypair
from shared.tuf_paths import artifact_path
from tests.edge.helpers import make_manifest, publish_version, variant
from tests.serving import make_settings, wait_for


def _signer() -> CryptoSigner:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return CryptoSigner(Ed25519PrivateKey.generate())


class Fleet:
    def __init__(self, client, keys: FleetKeys, ttl_s: int = 3600) -> None:
        self.client, self.keys = client, keys
        self.roots = [_signer() for _ in range(3)]
        self.targets, self.online = _signer(), _signer()
        self.repo = TufRepository(
            client, keys, TufSigners(self.targets, self.online), timestamp_ttl_s=ttl_s
        )
        self.trusted_root = self.repo.initialize(self.roots[:2], threshold=2)
        registry = Registry(client, keys, MemoryBlobStore())
        self.publisher = Publisher(registry, Signer(generate_keypair()[0]), tuf=self.repo)

    def publish(self, content: bytes):
        probe = ProbeSet(inputs=[[0.0] * 4], expected=[[0.5, 0.5]])
        return self.publisher.publish(
            PublishRequest("digits", content, 4, ["a", "b"], probe, runtime="test")
        )

    def edge(self, directory: Path) -> TufClient:
        return TufClient(self.client, self.keys, directory, self.trusted_root)


@pytest.fixture
def fleet(redis_client, keys) -> Fleet:
    return Fleet(redis_client, keys)


def test_published_version_downloads_verified(fleet, tmp_path):
    started = time.perf_counter()
    content = b"tflite-v1" * 1000
    p = fleet.publish(content)
    got = fleet.edge(tmp_path / "edge").download(p.sha256)
    assert decode_full(got.artifact) == content and sha256_hex(content) == p.sha256
    assert got.signed.manifest().sha256 == p.sha256 and (got.model, got.version) == ("digits", 1)
    assert time.perf_counter() - started < 5


def test_a_trickled_download_is_cut_at_its_deadline(fleet, tmp_path, redis_server, keys):
    """Each read answered inside the connection's timeout, the whole download not
    inside its deadline: refused as slow retrieval, and a good read goes through."""
    # 16 KiB that zstd cannot shrink: 32 reads of 512 bytes
    p = fleet.publish(random.Random(0).randbytes(16384))
    proxy = StallProxy(redis_server.port)
    client = redis.Redis(port=proxy.port, socket_timeout=1.0)
    try:
        fetcher = RedisFetcher(client, keys, chunk=512, deadline_s=1.0)
        edge = TufClient(client, keys, tmp_path / "edge", fleet.trusted_root, fetcher=fetcher)
        edge.refresh()  # metadata at full speed
        proxy.trickle.set()  # then 0.2 s per reply: 32 reads take 6 s
        started = time.monotonic()
        with pytest.raises(TufRefused, match="SlowRetrieval"):
            edge.download(p.sha256, refresh=False)
        assert time.monotonic() - started < 3.0
        proxy.trickle.clear()
        assert edge.download(p.sha256, refresh=False).sha256 == p.sha256
    finally:
        client.close()
        proxy.close()


def test_an_unreachable_redis_is_an_outage_not_a_refusal(fleet, tmp_path, redis_server, keys):
    """A Redis that stops answering in the middle of a download (a failover, a restart)
    comes out as the outage it is, which the updater waits out and tries again, not as
    a refused update: python-tuf's fetch would have wrapped it in a DownloadError."""
    p = fleet.publish(random.Random(0).randbytes(16384))  # 32 reads of 512 bytes
    proxy = StallProxy(redis_server.port)
    client = redis.Redis(port=proxy.port, socket_timeout=5.0)
    stopping = threading.Thread(target=lambda: (time.sleep(0.3), redis_server.stop()))
    try:
        fetcher = RedisFetcher(client, keys, chunk=512)
        edge = TufClient(client, keys, tmp_path / "edge", fleet.trusted_root, fetcher=fetcher)
        edge.refresh()
        proxy.trickle.set()  # 0.2 s a reply: the download takes 6 s
        stopping.start()  # the server stops at its first reads
        with pytest.raises(redis.ConnectionError):
            edge.download(p.sha256, refresh=False)
        stopping.join()  # gone, not going
        with pytest.raises(redis.ConnectionError):
            edge.refresh()
    finally:
        if stopping.ident is not None:
            stopping.join()  # a server still shutting down holds its port
        if redis_server.proc is None:
            redis_server.start()
        client.close()
        proxy.close()


def test_unlisted_version_refused(fleet, tmp_path, redis_client, keys):
    fleet.publish(b"v1" * 100)
    # A file put in place by anyone who can write the fleet's keys, but not signed into targets.
    rogue = b"rogue" * 100
    redis_client.set(keys.artifact(sha256_hex(rogue)), rogue)
    with pytest.raises(NotInTargets):
        fleet.edge(tmp_path / "edge").download(sha256_hex(rogue))


def test_tampered_file_refused(fleet, tmp_path, redis_client, keys):
    p = fleet.publish(b"v1" * 100)
    stored = redis_client.get(keys.artifact(p.sha256))
    redis_client.set(keys.artifact(p.sha256), stored[:-1] + bytes([stored[-1] ^ 1]))
    with pytest.raises(TufRefused, match="LengthOrHashMismatch"):
        fleet.edge(tmp_path / "edge").download(p.sha256)


def test_oversized_file_refused_before_read(fleet, tmp_path, redis_client, keys, monkeypatch):
    p = fleet.publish(b"v1" * 100)
    redis_client.append(keys.artifact(p.sha256), b"x" * 10_000_000)
    reads: list[int] = []
    real = redis_client.getrange
    monkeypatch.setattr(
        redis_client, "getrange", lambda k, a, b: reads.append(b - a) or real(k, a, b)
    )
    edge = fleet.edge(tmp_path / "edge")
    with pytest.raises(TufRefused, match="DownloadLengthMismatch"):
        edge.download(p.sha256)
    assert sum(reads) < 100_000  # only metadata was read, never the 10 MB


def test_targets_signed_by_another_key_refused(fleet, tmp_path, redis_client, keys):
    edge = fleet.edge(tmp_path / "edge")
    fleet.publish(b"v1" * 100)
    edge.refresh()
    # The trainer's key stolen? No: a key that root does not name for targets. Our own
    # publisher refuses to sign with it; written straight to Redis, the edge refuses it.
    rogue_key = _signer()
    rogue = TufRepository(redis_client, keys, TufSigners(rogue_key, fleet.online))
    rogue_pub = Publisher(fleet.publisher.registry, Signer(generate_keypair()[0]), tuf=rogue)
    probe = ProbeSet(inputs=[[0.0] * 4], expected=[[0.5, 0.5]])
    with pytest.raises(ConfigError, match="not the one"):
        rogue_pub.publish(PublishRequest("digits", b"evil" * 99, 4, ["a", "b"], probe, "t"))
    evil = b"evil" * 99
    targets = Metadata[Targets].from_bytes(redis_client.get(keys.tuf_metadata("targets.json")))
    tf = TargetFile.from_data(artifact_path(sha256_hex(evil)), evil, ["sha256"])
    targets.signed.targets[tf.path] = tf
    targets.signed.version += 1
    targets.sign(rogue_key)
    redis_client.set(keys.tuf_metadata("targets.json"), targets.to_bytes())
    redis_client.set(keys.artifact(sha256_hex(evil)), evil)
    fleet.repo.refresh()  # even the online key vouching for them
    with pytest.raises(TufRefused):
        edge.download(sha256_hex(evil))


def test_replayed_old_metadata_refused(fleet, tmp_path, redis_client, keys):
    edge = fleet.edge(tmp_path / "edge")
    fleet.publish(b"v1" * 100)
    old = {
        n: redis_client.get(keys.tuf_metadata(n))
        for n in ("targets.json", "snapshot.json", "timestamp.json")
    }
    p2 = fleet.publish(b"v2" * 100)
    edge.download(p2.sha256)
    for n, v in old.items():  # roll the whole repository back to before v2
        redis_client.set(keys.tuf_metadata(n), v)
    with pytest.raises(TufRefused, match="Version"):
        edge.refresh()


def test_expired_timestamp_is_stale(redis_client, keys, tmp_path):
    fleet = Fleet(redis_client, keys, ttl_s=1)
    p = fleet.publish(b"v1" * 100)
    edge = fleet.edge(tmp_path / "edge")
    edge.download(p.sha256)
    assert not edge.stale
    time.sleep(2.1)
    with pytest.raises(TufRefused, match="expired"):
        edge.refresh()
    assert edge.stale
    fleet.repo.refresh()  # the cloud's schedule re-signs: fresh again
    edge.refresh()
    assert not edge.stale


# -- a real edge daemon serving through TUF ------------------------------------------


def _request(version: int) -> PublishRequest:
    data = variant(version)
    m = make_manifest(data, version)
    return PublishRequest("digits", data, m.num_features, m.labels, m.probe, runtime=m.runtime)


def test_edge_daemon_installs_only_tuf_listed_versions(redis_client, keys, tmp_path, signing):
    fleet = Fleet(redis_client, keys)
    fleet.publisher.signer = signing.signer
    root = tmp_path / "root.json"
    root.write_bytes(fleet.trusted_root)
    fleet.publisher.publish(_request(1))
    settings = make_settings(
        tmp_path,
        _url(redis_client),
        signing.public_key,
        tuf_root=root,
        guard_enabled=False,
    )
    with EdgeDaemon(settings) as daemon:
        wait_for(lambda: _serving(daemon) == 1, what="v1 served through TUF")
        updater = daemon.models["digits"].updater
        # A version announced, signed with the manifest key and made the fleet's target,
        # but never put into the TUF targets (raw writes by anyone with the fleet's
        # keys and the trainer's manifest key): refused.
        redis_client.set(keys.target("digits"), sha256_hex(variant(2)))
        publish_version(redis_client, keys, signing.signer, variant(2), 2)
        wait_for(lambda: updater.updates_refused >= 1, what="unlisted v2 refused")
        assert "do not list" in (updater.last_error or "")
        assert _serving(daemon) == 1
        good = fleet.publisher.publish(_request(3))  # the registry's version 2
        wait_for(
            lambda: daemon.chain.current.sha256 == good.sha256,  # type: ignore[union-attr]
            what="the published version served through TUF",
        )


def _url(client) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}"


def _serving(daemon: EdgeDaemon) -> int | None:
    current = daemon.chain.current
    return current.version if current else None


def test_edge_daemon_reports_stale_and_keeps_serving(redis_client, keys, tmp_path, signing):
    fleet = Fleet(redis_client, keys, ttl_s=2)
    fleet.publisher.signer = signing.signer
    root = tmp_path / "root.json"
    root.write_bytes(fleet.trusted_root)
    fleet.publisher.publish(_request(1))
    settings = make_settings(
        tmp_path,
        _url(redis_client),
        signing.public_key,
        tuf_root=root,
        guard_enabled=False,
        desired_poll_s=0.2,
    )
    with EdgeDaemon(settings) as daemon:
        wait_for(lambda: _serving(daemon) == 1, what="v1 served through TUF")
        assert not daemon.health().stale
        # Nobody re-signs the timestamp (the cloud's schedule is frozen): stale, still serving.
        wait_for(lambda: daemon.health().stale, timeout=6, what="stale reported")
        health = daemon.health()
        assert health.version == 1 and health.models["digits"].stale
        fleet.repo.refresh()
        wait_for(lambda: not daemon.health().stale, what="fresh again after the refresh")


def test_controller_loop_re_signs_the_timestamp(fleet, redis_client, keys):
    from cloud.rollout.controller import RolloutController
    from cloud.rollout.loop import ControllerLoop

    def ts_version() -> int:
        return int(
            Metadata[Timestamp]
            .from_bytes(redis_client.get(keys.tuf_metadata("timestamp.json")))
            .signed.version
        )

    first = ts_version()
    controller = RolloutController(redis_client, keys, fleet.publisher.registry)
    online_only = TufRepository(redis_client, keys, TufSigners(online=fleet.online))
    loop = ControllerLoop(controller, 0.05, tuf=online_only, tuf_refresh_s=0.1)
    loop.start()
    try:
        wait_for(lambda: ts_version() >= first + 2, what="two scheduled re-signs")
    finally:
        loop.stop()


def test_metadata_from_another_fleet_refused(fleet, redis_client, keys, tmp_path):
    """Mix-and-match: another fleet's (validly signed) targets copied into this one."""
    other_keys = FleetKeys("other")
    other = Fleet(redis_client, other_keys)
    p = other.publish(b"theirs" * 100)
    edge = fleet.edge(tmp_path / "edge")
    edge.refresh()
    for name in ("targets.json", "snapshot.json", "timestamp.json"):
        redis_client.set(keys.tuf_metadata(name), redis_client.get(other_keys.tuf_metadata(name)))
    redis_client.set(keys.artifact(p.sha256), redis_client.get(other_keys.artifact(p.sha256)))
    with pytest.raises(TufRefused):
        edge.download(p.sha256)


def test_targets_older_than_the_snapshot_says_refused(fleet, redis_client, keys, tmp_path):
    """Mix-and-match: the current snapshot and timestamp with an older targets file."""
    fleet.publish(b"v1" * 100)
    old_targets = redis_client.get(keys.tuf_metadata("targets.json"))
    p2 = fleet.publish(b"v2" * 100)
    redis_client.set(keys.tuf_metadata("targets.json"), old_targets)
    with pytest.raises(TufRefused, match="Version"):
        fleet.edge(tmp_path / "edge").download(p2.sha256)


class PublishingFetcher(RedisFetcher):
    """Publishes a version the first ``times`` times the updater is about to read
    targets.json: the publish lands between its reads of snapshot and targets."""

    def __init__(self, fleet: Fleet, times: int) -> None:
        super().__init__(fleet.client, fleet.keys)
        self.fleet, self.left, self.published = fleet, times, []

    def download_file(self, url, max_length):
        if url.endswith("/targets.json") and self.left:
            self.left -= 1
            self.published.append(self.fleet.publish(b"mid" * 100 + bytes([self.left])))
        return super().download_file(url, max_length)


@pytest.mark.parametrize("publishes", [1, MOVED_ON_RETRIES + 1])
def test_a_publish_inside_a_refresh_is_read_again_not_refused(
    fleet, redis_client, keys, tmp_path, publishes
):
    """No consistent snapshots: a publish between the updater's reads of snapshot and
    targets hands it a targets newer than its snapshot names. The refresh starts again
    (up to three times) and lists the new version; a repository that keeps moving on
    past that is refused, like any metadata that does not chain."""
    fleet.publish(b"v1" * 100)
    fetcher = PublishingFetcher(fleet, publishes)
    edge = TufClient(redis_client, keys, tmp_path / "edge", fleet.trusted_root, fetcher=fetcher)
    if publishes > 1:
        with pytest.raises(TufRefused, match="BadVersionNumberError: Expected targets v"):
            edge.refresh()
        return
    edge.refresh()
    assert edge.lists(fetcher.published[-1].sha256)


def test_edge_daemon_serves_only_what_director_and_targets_name(
    redis_client, keys, tmp_path, signing
):
    from cloud.rollout.director import Director

    fleet = Fleet(redis_client, keys)
    fleet.publisher.signer = signing.signer
    fleet.publisher.release = "manual"  # what a device serves is the director's to say
    root = tmp_path / "root.json"
    root.write_bytes(fleet.trusted_root)
    director_private, director_public = generate_keypair()
    (tmp_path / "director.pub").write_bytes(director_public)
    director = Director(redis_client, keys, Signer(director_private))
    v1 = fleet.publisher.publish(_request(1))
    v2 = fleet.publisher.publish(_request(2))
    director.order("digits", v1.sha256)
    settings = make_settings(
        tmp_path,
        _url(redis_client),
        signing.public_key,
        tuf_root=root,
        director_keys=[tmp_path / "director.pub"],
        guard_enabled=False,
        desired_poll_s=0.2,
    )
    with EdgeDaemon(settings) as daemon:
        wait_for(lambda: _serving(daemon) == 1, what="v1 served: the director's order")
        updater = daemon.models["digits"].updater
        # Raw unsigned writes (and the trainer's publish) choose nothing.
        redis_client.set(keys.target("digits"), v2.sha256)
        time.sleep(0.6)
        assert _serving(daemon) == 1
        old = redis_client.hget(keys.director("digits"), "fleet")
        director.order("digits", v2.sha256)
        wait_for(lambda: _serving(daemon) == 2, what="v2 served: a newer order")
        refused = updater.updates_refused
        redis_client.hset(keys.director("digits"), "fleet", old)  # replay the older order
        wait_for(lambda: updater.updates_refused > refused, what="replayed order refused")
        assert _serving(daemon) == 2 and "replayed" in (updater.last_error or "")
        director.order("digits", v1.sha256)  # a legitimate rollback: higher counter
        wait_for(lambda: _serving(daemon) == 1, what="rolled back by a newer order")


def test_edge_daemon_applies_a_patch_listed_in_targets(redis_client, keys, tmp_path, signing):
    """A patch is a TUF target too (length and sha256 signed): a TUF edge applies it
    instead of downloading the full file, and falls back to the full file when the
    listed patch is gone (its key expired) or does not verify."""
    from tests.edge.helpers import same_size_variant

    def same_size(version: int) -> PublishRequest:
        data = same_size_variant(version)
        m = make_manifest(data, version)
        return PublishRequest("digits", data, m.num_features, m.labels, m.probe, m.runtime)

    fleet = Fleet(redis_client, keys)
    fleet.publisher.signer = signing.signer
    fleet.publisher.release = "direct"
    root = tmp_path / "root.json"
    root.write_bytes(fleet.trusted_root)
    fleet.publisher.publish(same_size(1))
    settings = make_settings(
        tmp_path, _url(redis_client), signing.public_key, tuf_root=root, guard_enabled=False
    )
    with EdgeDaemon(settings) as daemon:
        wait_for(lambda: _serving(daemon) == 1, what="v1 served through TUF")
        updater = daemon.models["digits"].updater
        assert (updater.full_downloads, updater.patches_applied) == (1, 0)
        v2 = fleet.publisher.publish(same_size(2))
        assert any(p.encoding == "patch" for p in v2.payloads)
        wait_for(lambda: _serving(daemon) == 2, what="v2 served through a TUF patch")
        assert (updater.full_downloads, updater.patches_applied) == (1, 1)
        # The next patch is listed, but its key is tampered with: refused, full file.
        fleet.publisher.release = "manual"  # the target stays on v2 until we move it
        v3 = fleet.publisher.publish(same_size(3))
        redis_client.append(keys.patch(v2.sha256, v3.sha256), b"x")
        redis_client.set(keys.target("digits"), v3.sha256)
        wait_for(lambda: _serving(daemon) == 3, what="v3 served from the full file")
        assert updater.full_downloads == 2 and updater.patch_failures == 1
        # Listed, but its key expired in Redis (patch_ttl_s): the full file again.
        v4 = fleet.publisher.publish(same_size(4))
        redis_client.delete(keys.patch(v3.sha256, v4.sha256))
        redis_client.set(keys.target("digits"), v4.sha256)
        wait_for(lambda: _serving(daemon) == 4, what="v4 served from the full file")
        assert (updater.full_downloads, updater.patch_failures) == (3, 2)
