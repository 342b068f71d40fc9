"""A Redis Cluster master killed while a version is being published and an edge follows
the fleet: the replica takes over, the publisher and the edge reconnect, no version is
half-published or lost once confirmed, and the edge serves only verified files.

The test starts a cluster of its own (it kills one of its masters). Run with ``-s`` for
the figures (docs/ARCHITECTURE.md, "A publish during a failover").
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from tuf.api.metadata import Metadata, Root

from cloud.registry.publisher import (
    Published,
    Publisher,
    PublishError,
    PublishNotReplicated,
    PublishRequest,
    StaleParent,
)
from cloud.registry.tuf_keys import KeyDir, init_fleet
from cloud.registry.tuf_repo import TufRepository, TufSigners, load_signer
from cloud.registry.versions import DirBlobStore, Registry
from edge.daemon import EdgeDaemon
from edge.settings import BUNDLED_BASELINE
from shared.codec import decode_full, sha256_hex
from shared.keys import FleetKeys
from shared.messages import DeltaAnnouncement, ProbeSet, SignedManifest, VersionRecord
from shared.redis_client import connect_redis
from shared.replies import REDIS_DOWN
from shared.runtime import TFLiteModel
from shared.signing import Verifier
from tests.redis_cluster import RedisClusterNodes
from tests.serving import Signing, wait_for

MODEL = "digits"
_ROLES = ("root", "targets", "snapshot", "timestamp")
VERSIONS = 8  # published in a row; the master dies inside the third
KILL_IN = 3


def _request(n: int) -> PublishRequest:
    """A distinct, valid model file (the baseline with ``n`` padding bytes TFLite ignores)
    and what its manifest says of it."""
    content = BUNDLED_BASELINE.read_bytes() + b"\0" * n
    inputs = np.zeros((2, 64), dtype=np.float32)
    expected = TFLiteModel(content).predict_proba_batch(inputs)
    probe = ProbeSet(inputs=inputs.tolist(), expected=expected.tolist())
    return PublishRequest(
        MODEL, content, num_features=64, labels=[str(i) for i in range(10)], probe=probe,
        runtime="ai-edge-litert (tests)",
    )  # fmt: skip


def _publish_ms(publisher: Publisher, first: int, count: int) -> float:
    """Median time of one publish, in ms."""
    times = []
    for n in range(first, first + count):
        request = _request(n)
        t = time.perf_counter()
        publisher.publish(request)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1000


def _median_ms(call: Callable[[], object], times: int) -> float:
    spent = []
    for _ in range(times):
        t = time.perf_counter()
        call()
        spent.append(time.perf_counter() - t)
    return sorted(spent)[times // 2] * 1000


class PublishLoop:
    """Publishes versions one after another as a trainer's rounds would, each retried
    until it is confirmed on a replica: a publish that raised is published again, or,
    when it turns out to be a version already (it survived), confirmed again."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.confirmed: list[str] = []
        self.failures: dict[str, int] = {}
        self.unconfirmed: list[Published] = []  # published on a master, not confirmed
        self.errors: list[str] = []
        self.elapsed: list[float] = []

    def run(self, requests: list[PublishRequest]) -> None:
        for request in requests:
            t = time.monotonic()
            sha = sha256_hex(request.content)
            while True:
                try:
                    self.publisher.publish(request)
                    break
                except StaleParent:
                    raise  # not asked for: each publish takes whatever is latest
                except PublishError as e:
                    self._count(e)
                    if isinstance(e, PublishNotReplicated) and e.published is not None:
                        self.unconfirmed.append(e.published)
                    if "already a published version" in str(e) and self._reconfirm(sha):
                        break
                except (redis.RedisError, *REDIS_DOWN) as e:
                    self._count(e)
                time.sleep(0.1)
            self.confirmed.append(sha)
            self.elapsed.append(time.monotonic() - t)

    def _reconfirm(self, sha: str) -> bool:
        try:
            self.publisher.confirm(MODEL, sha)
            return True
        except PublishNotReplicated as e:
            self._count(e)
            return False

    def _count(self, e: Exception) -> None:
        name = type(e).__name__
        self.errors.append(f"{name}: {str(e)[:60]}")
        self.failures[name] = self.failures.get(name, 0) + 1


def test_a_master_killed_inside_a_publish_leaves_every_version_whole(
    own_cluster: RedisClusterNodes,
    tmp_path: Path,
    signing: Signing,
    daemon_factory: Callable[..., EdgeDaemon],
) -> None:
    keys = FleetKeys("lab")
    client = connect_redis(own_cluster.url)
    registry = Registry(client, keys, DirBlobStore(tmp_path / "blobs"))
    plain = Publisher(registry, signing.signer)
    measured = Publisher(registry, signing.signer, wait_replicas=1, wait_ms=5000)
    cost = _publish_ms(plain, 1000, 15), _publish_ms(measured, 2000, 15)
    sha = measured.versions(MODEL)[-1][1]
    confirm_ms = _median_ms(lambda: measured.confirm(MODEL, sha), 50)
    print(
        f"\npublish: {cost[0]:.1f} ms; with WAIT 1: {cost[1]:.1f} ms (median of 15); "
        f"the confirmation alone (record rewrite + WAIT 1): {confirm_ms:.2f} ms (median of 50)"
    )
    own_cluster.flushall()
    # A TUF repository (cloud/registry/tuf_repo.py): each publish adds its version to
    # targets, snapshot and timestamp in its transaction; the edge trusts only what
    # that metadata vouches for.
    keydir = KeyDir(tmp_path / "keys")
    init_fleet(client, keys, keydir, director=False)
    tuf = TufRepository(
        client,
        keys,
        TufSigners(load_signer(keydir.file("targets")), load_signer(keydir.file("online"))),
    )
    waiting = Publisher(registry, signing.signer, wait_replicas=1, wait_ms=1000, tuf=tuf)
    master = client.get_node_from_key(keys.versions(MODEL)).port

    # The kill lands between a publish's EXEC (answered: the version is on the master and
    # announced) and its confirmation by a replica: the window the confirmation is for.
    killed_at = 0.0
    publishes = 0
    confirm = waiting.confirm

    def confirm_then_kill(model: str, sha256: str) -> None:
        nonlocal killed_at, publishes
        publishes += 1
        if publishes == KILL_IN and not killed_at:
            own_cluster.kill(master)
            killed_at = time.monotonic()
        confirm(model, sha256)

    waiting.confirm = confirm_then_kill  # type: ignore[method-assign]
    loop = PublishLoop(waiting)
    requests = [_request(n) for n in range(1, VERSIONS + 1)]
    loop.run(requests[:1])
    edge = daemon_factory(
        redis_url=own_cluster.url, desired_poll_s=0.5, tuf_root=keydir.trusted_root
    )
    wait_for(lambda: _serving(edge) == loop.confirmed[0], 10, "the edge on v1")
    served, watching = _watch(edge)

    publisher = threading.Thread(target=loop.run, args=(requests[1:],))
    publisher.start()
    wait_for(lambda: killed_at, 10, "the kill")
    wait_for(lambda: _slot_master(own_cluster, keys.versions(MODEL), master), 15, "a new master")
    failover_s = time.monotonic() - killed_at
    # The promoted master has no replica: no publish is confirmed until the killed node is
    # back as its replica.
    confirmed_alone = len(loop.confirmed)
    own_cluster.restart(master)
    publisher.join(30)
    assert not publisher.is_alive()
    done_s = time.monotonic() - killed_at
    latest = loop.confirmed[-1]
    wait_for(lambda: _serving(edge) == latest, 10, "the edge on the latest version")
    converged_s = time.monotonic() - killed_at

    time.sleep(0.05)  # a last look
    watching.set()
    reader = connect_redis(own_cluster.url)
    listed = _check_whole(reader, keys, signing)
    vouched = _check_tuf(reader, keys)
    announced = _announced(reader, keys)
    print(
        f"master {master} killed inside publish {KILL_IN} (after its EXEC, before its WAIT); "
        f"a replica served the slot {failover_s:.1f} s later; {confirmed_alone - KILL_IN + 1} "
        f"publishes confirmed before the killed node was back as its replica; "
        f"{len(loop.confirmed)} versions confirmed, {len(listed)} listed, all whole, "
        f"{len(vouched)} in TUF's targets; failures retried: {loop.failures}; publishes done {done_s:.1f} s after the kill; "
        f"the edge on the latest {converged_s:.1f} s after it, {edge.updater.swaps} swaps, "
        f"{edge.updater.updates_refused} refused"
    )
    # Every confirmed version is listed, once, and each listed one is whole; numbers 1..n.
    assert set(loop.confirmed) <= set(listed.values())
    assert sorted(listed) == list(range(1, len(listed) + 1))
    assert len(set(listed.values())) == len(listed)
    # Every version listed was announced, and every announcement names a listed version.
    assert set(announced) == set(listed.values())
    # TUF's metadata, each role signed by the keys root names and chained by version,
    # vouches for exactly the listed versions' files.
    assert vouched == set(listed.values())
    assert sum(loop.failures.values()) > 0  # the kill was felt, and retried
    # The edge served only versions the registry holds, each verified (manifest signature,
    # file hash) before the swap; it refused nothing, and ends on the latest.
    assert set(served) <= set(listed.values())
    assert edge.updater.updates_refused == 0
    assert _serving(edge) == latest == listed[max(listed)]


def test_a_publish_its_replica_never_saw_is_lost_and_reported(
    own_cluster: RedisClusterNodes,
    tmp_path: Path,
    signing: Signing,
    daemon_factory: Callable[..., EdgeDaemon],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The window WAIT is for, made certain: the replica stopped and its link cut before a
    publish's EXEC, the master killed after it once the edge has installed the version
    (TUF metadata and all). The master answered the EXEC (a publisher without WAIT would
    have returned), the version dies with it."""
    caplog.set_level(logging.WARNING)
    keys = FleetKeys("lab")
    client = connect_redis(own_cluster.url)
    registry = Registry(client, keys, DirBlobStore(tmp_path / "blobs"))
    keydir = KeyDir(tmp_path / "keys")
    init_fleet(client, keys, keydir, director=False)
    tuf = TufRepository(
        client,
        keys,
        TufSigners(load_signer(keydir.file("targets")), load_signer(keydir.file("online"))),
    )
    publisher = Publisher(registry, signing.signer, wait_replicas=1, wait_ms=500, tuf=tuf)
    loop = PublishLoop(publisher)
    requests = [_request(n) for n in range(1, 5)]
    loop.run(requests[:2])
    edge = daemon_factory(
        redis_url=own_cluster.url, desired_poll_s=0.5, tuf_root=keydir.trusted_root
    )
    wait_for(lambda: _serving(edge) == loop.confirmed[1], 10, "the edge on v2")
    served, watching = _watch(edge)
    master = client.get_node_from_key(keys.versions(MODEL)).port  # type: ignore[attr-defined]
    replica = int(own_cluster.node(master).info("replication")["slave0"]["port"])
    record_version, confirm = registry.record_version, publisher.confirm
    cut = 0.0

    def cut_then_record(pipe: Any, record: VersionRecord, *args: Any) -> None:
        # inside v3's transaction, before its EXEC: the replica stops and its link is cut
        nonlocal cut
        if record.version == 3 and not cut:
            own_cluster.procs[replica].send_signal(signal.SIGSTOP)
            own_cluster.node(master).client_kill_filter(_type="replica")
            cut = time.monotonic()
        record_version(pipe, record, *args)

    killed: list[float] = []

    edge_had_it: list[bool] = []

    def kill_then_confirm(model: str, sha256: str) -> None:
        if cut and not killed:
            # the EXEC was answered: the version is on the master, and announced; the edge
            # installs it (the replica must not stay stopped past cluster-node-timeout)
            edge_had_it.append(_until(lambda: _serving(edge) == sha256, 1.2))
            own_cluster.kill(master)
            own_cluster.procs[replica].send_signal(signal.SIGCONT)
            killed.append(time.monotonic())
        confirm(model, sha256)

    registry.record_version = cut_then_record  # type: ignore[method-assign]
    publisher.confirm = kill_then_confirm  # type: ignore[method-assign]
    # v1 or v2 may have been confirmed late, on a busy machine: what follows is about v3
    unconfirmed_before = len(loop.unconfirmed)
    publishing = threading.Thread(target=loop.run, args=(requests[2:],))
    publishing.start()
    wait_for(lambda: _slot_master(own_cluster, keys.versions(MODEL), master), 15, "a new master")
    failover_s = time.monotonic() - cut
    # back empty: its append-only file holds the v3 its replica never saw, and this test
    # is about what the promoted replica has
    own_cluster.restart(master, empty=True)
    publishing.join(30)
    assert not publishing.is_alive()
    latest = loop.confirmed[-1]
    wait_for(lambda: _serving(edge) == latest, 10, "the edge on the latest version")
    time.sleep(0.05)  # a last look
    watching.set()

    reader = connect_redis(own_cluster.url)
    final_master = reader.get_node_from_key(keys.versions(MODEL)).port  # type: ignore[attr-defined]
    listed = _check_whole(reader, keys, signing)
    stream_ids = {i.decode() for i, _ in reader.xrange(keys.deltas)}
    first = loop.unconfirmed[unconfirmed_before]  # v3 as the killed master published it
    lost = first.announcement_id not in stream_ids
    print(
        f"\nreplica {replica} stopped and cut off, master {master} killed after v3's EXEC; "
        f"slot served by {replica} {failover_s:.1f} s later (the edge had installed v3: "
        f"{edge_had_it}); v3 as the master answered it "
        f"{'lost' if lost else 'survived'} (its announcement {first.announcement_id} "
        f"{'absent' if lost else 'present'}); failures retried: {loop.failures}; "
        f"{len(loop.confirmed)} versions confirmed, {len(listed)} listed, all whole; "
        f"the edge served {sorted(n for n, sha in listed.items() if sha in served)} and "
        f"refused {edge.updater.updates_refused} ({edge.updater.last_error}); the slot's "
        f"master at the end: {final_master}; errors in order: {loop.errors}"
    )
    assert first.version == 3 and lost  # acknowledged by the master, gone with it...
    assert edge_had_it == [True]  # ...after the edge had installed it, verified
    assert sorted(listed) == [1, 2, 3, 4]  # ...reported, and published again
    assert loop.confirmed == [listed[n] for n in (1, 2, 3, 4)]
    assert set(served) <= set(listed.values())
    # The edge trusted the lost publish's TUF timestamp: if it looked in the gap before
    # the republish, it refused the promoted master's older metadata as a rollback (and
    # kept serving the verified v3); nothing else was refused.
    refused = [r.getMessage() for r in caplog.records if "refused digits" in r.getMessage()]
    assert len(refused) == edge.updater.updates_refused
    assert all("BadVersionNumberError" in line for line in refused)
    assert _serving(edge) == listed[4]


def _until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _watch(edge: EdgeDaemon) -> tuple[set[str], threading.Event]:
    """Every version the edge serves, seen every 10 ms until the event is set."""
    served: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.01):
            sha = _serving(edge)
            if sha is not None:
                served.add(sha)

    threading.Thread(target=watch, daemon=True).start()
    return served, done


def _serving(edge: EdgeDaemon) -> str | None:
    current = edge.chain.current
    return current.sha256 if current is not None else None


def _slot_master(cluster: RedisClusterNodes, key: str, dead: int) -> int | None:
    """The port of the master that serves ``key``'s slot, asked of a live node, once it is
    not ``dead``."""
    slot = redis.cluster.key_slot(key.encode())
    live = next(p for p in cluster.procs if p != dead)
    slots: Any = cluster.node(live).execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
    for start, end, node, *_ in slots:
        if start <= slot <= end:
            port = int(node[1])
            return port if port != dead else None
    return None


def _check_whole(client: Any, keys: FleetKeys, signing: Signing) -> dict[int, str]:
    """Every version the registry lists, by number: each has its record, its signed
    manifest (verified, naming that number and sha256) and its file (hashing to it)."""
    verifier = Verifier(signing.public_pem)
    listed: dict[int, str] = {}
    for sha_raw, score in client.zrange(keys.versions(MODEL), 0, -1, withscores=True):
        sha, number = sha_raw.decode(), int(score)
        record = VersionRecord.from_wire(client.hget(keys.version_records(MODEL), sha))
        raw = client.get(keys.manifest(sha))
        assert raw is not None, f"v{number}: no manifest"
        signed = SignedManifest.from_wire(raw)
        verifier.verify(signed.manifest_json.encode(), signed.signature)
        manifest = signed.manifest()
        assert (manifest.version, manifest.sha256, record.version) == (number, sha, number)
        artifact = client.get(keys.artifact(sha))
        assert artifact is not None and sha256_hex(decode_full(artifact)) == sha
        listed[number] = sha
    return listed


def _check_tuf(client: Any, keys: FleetKeys) -> set[str]:
    """The sha256 of every version TUF's targets lists, after checking the chain: root
    signs targets, snapshot and timestamp; timestamp names snapshot's version, snapshot
    names targets'; each listed file's length and sha256 are its artifact's."""
    meta = {n: client.get(keys.tuf_metadata(f"{n}.json")) for n in _ROLES}
    root = Metadata[Root].from_bytes(meta["root"])
    parsed: dict[str, Any] = {}
    for role in ("targets", "snapshot", "timestamp"):
        md = Metadata.from_bytes(meta[role])
        root.signed.verify_delegate(role, md.signed_bytes, md.signatures)
        parsed[role] = md.signed
    assert parsed["timestamp"].snapshot_meta.version == parsed["snapshot"].version
    assert parsed["snapshot"].meta["targets.json"].version == parsed["targets"].version
    shas = set()
    for path, target in parsed["targets"].targets.items():
        if not path.startswith("artifacts/"):
            continue
        sha = path.removeprefix("artifacts/")
        artifact = client.get(keys.artifact(sha))
        assert artifact is not None and target.length == len(artifact)
        assert target.hashes["sha256"] == sha256_hex(artifact)
        shas.add(sha)
    return shas


def _announced(client: Any, keys: FleetKeys) -> list[str]:
    return [
        DeltaAnnouncement.from_wire(fields[b"data"]).sha256
        for _, fields in client.xrange(keys.deltas)
        if b"data" in fields
    ]


def test_a_publish_is_confirmed_by_the_replica_of_its_slots_master(
    redis_cluster: RedisClusterNodes, tmp_path: Path, signing: Signing
) -> None:
    redis_cluster.flushall()
    keys = FleetKeys("lab")
    client = connect_redis(redis_cluster.url)
    registry = Registry(client, keys, DirBlobStore(tmp_path / "blobs"))
    publisher = Publisher(registry, signing.signer, wait_replicas=1, wait_ms=2000)
    published = publisher.publish(_request(1))
    # the replica of that master holds the whole version at once
    node = client.get_node_from_key(keys.versions(MODEL))  # type: ignore[attr-defined]
    info = redis.Redis(host=node.host, port=node.port).info("replication")
    replica = redis.Redis(host=info["slave0"]["ip"], port=info["slave0"]["port"])
    replica.execute_command("READONLY")  # type: ignore[no-untyped-call]
    assert replica.zscore(keys.versions(MODEL), published.sha256) == 1
    assert replica.exists(keys.manifest(published.sha256), keys.artifact(published.sha256)) == 2
    with pytest.raises(PublishNotReplicated, match="1 of 2"):
        Publisher(registry, signing.signer, wait_replicas=2, wait_ms=50).publish(_request(2))
