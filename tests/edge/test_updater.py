"""The update consumer: convergence, live updates, and every refusal keeping the old model."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from helpers import (
    DYNAMIC_MODEL,
    FLOAT_MODEL,
    make_manifest,
    probe_for,
    publish_version,
    sign,
    variant,
)

from edge.daemon import EdgeDaemon
from shared.codec import encode_full, sha256_hex
from shared.keys import FleetKeys
from shared.messages import DeltaAnnouncement, Payload, ProbeSet, SignedManifest
from shared.signing import Signer, generate_keypair
from tests.serving import Signing, wait_for

Factory = Callable[..., EdgeDaemon]


def serving_version(daemon: EdgeDaemon) -> int | None:
    current = daemon.chain.current
    return current.version if current else None


def test_a_new_edge_converges_to_the_newest_announcement_at_once(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    for v in (1, 2, 3):
        publish_version(redis_client, keys, signing.signer, variant(v), v)
    daemon = daemon_factory()
    wait_for(lambda: serving_version(daemon) == 3, what="v3 served")
    assert daemon.updater.swaps == 1  # straight to the newest, no replay of history
    last_id = redis_client.xrevrange(keys.deltas, count=1)[0][0].decode()
    wait_for(lambda: daemon.store.deltas_last_id == last_id, what="stream position saved")
    assert daemon.store.current == sha256_hex(variant(3))


@pytest.mark.redis_cluster
def test_new_versions_are_applied_live_and_reported(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    daemon = daemon_factory()
    assert daemon.health().state == "degraded"  # only the baseline so far
    publish_version(redis_client, keys, signing.signer, variant(1), 1)
    wait_for(lambda: serving_version(daemon) == 1, what="v1 served")
    publish_version(redis_client, keys, signing.signer, variant(2), 2)
    wait_for(lambda: serving_version(daemon) == 2, what="v2 served")
    assert daemon.chain.last_known_good is not None and daemon.chain.last_known_good.version == 1
    assert daemon.store.last_known_good == sha256_hex(variant(1))
    health = daemon.health()
    assert health.state == "serving" and health.counters.swaps == 2
    assert health.counters.bytes_downloaded > 0

    def reported() -> bool:
        raw = redis_client.get(keys.device("pi-1"))
        return raw is not None and json.loads(raw)["version"] == 2

    wait_for(reported, what="status after the swap")


def _tampered(keys: FleetKeys, signer: Signer) -> dict[str, Any]:
    bad = bytearray(variant(2))
    bad[5000] ^= 0x01
    return {"artifact": encode_full(bytes(bad))}


def _truncated(keys: FleetKeys, signer: Signer) -> dict[str, Any]:
    blob = encode_full(variant(2))
    return {"artifact": blob[: len(blob) // 2]}


def _unsigned(keys: FleetKeys, signer: Signer) -> dict[str, Any]:
    return {"signed": SignedManifest(manifest_json=make_manifest(variant(2), 2).model_dump_json())}


def _wrong_key(keys: FleetKeys, signer: Signer) -> dict[str, Any]:
    other = Signer(generate_keypair()[0])
    return {"signed": sign(other, make_manifest(variant(2), 2))}


def _forged(keys: FleetKeys, signer: Signer) -> dict[str, Any]:
    good = sign(signer, make_manifest(variant(2), 2))
    text = good.manifest_json.replace('"version":2', '"version":99')
    return {"signed": SignedManifest(manifest_json=text, signature=good.signature)}


def _probe_mismatch(keys: FleetKeys, signer: Signer) -> dict[str, Any]:
    probe = probe_for(variant(2))
    wrong = [row[1:] + row[:1] for row in probe.expected]  # every argmax moves
    bad = ProbeSet(inputs=probe.inputs, expected=wrong)
    return {"manifest": make_manifest(variant(2), 2, probe=bad)}


def _wrong_shape(keys: FleetKeys, signer: Signer) -> dict[str, Any]:
    return {"manifest": make_manifest(variant(2), 2, num_features=32)}


def _wrong_size(keys: FleetKeys, signer: Signer) -> dict[str, Any]:
    return {"manifest": make_manifest(variant(2), 2, size=len(variant(2)) + 1)}


def _other_hash_announced(keys: FleetKeys, signer: Signer) -> dict[str, Any]:
    return {"announce_sha": sha256_hex(b"something else")}


REFUSALS = {
    "tampered artifact": (_tampered, "hashes to"),
    "truncated artifact": (_truncated, "does not decompress"),
    "unsigned manifest": (_unsigned, "unsigned"),
    "signature by another key": (_wrong_key, "signed by key"),
    "manifest edited after signing": (_forged, "does not verify"),
    "probe mismatch": (_probe_mismatch, "probe check failed"),
    "shape not as the manifest says": (_wrong_shape, "maps 64 values"),
    "size not as the manifest says": (_wrong_size, "the manifest says"),
    "announcement names another hash": (_other_hash_announced, "not the announced"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_bad_update_is_refused_and_the_old_model_keeps_serving(
    case: str, daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    make_bad, message = REFUSALS[case]
    daemon = daemon_factory()
    publish_version(redis_client, keys, signing.signer, variant(1), 1)
    wait_for(lambda: serving_version(daemon) == 1, what="v1 served")
    publish_version(
        redis_client, keys, signing.signer, variant(2), 2, **make_bad(keys, signing.signer)
    )
    wait_for(lambda: daemon.updater.updates_refused == 1, what="the refusal")
    assert serving_version(daemon) == 1
    assert daemon.predict(variant_input()).model_version == 1
    health = daemon.health()
    assert health.counters.updates_refused == 1 and health.state == "serving"
    assert health.last_error is not None and message in health.last_error
    assert daemon.store.current == sha256_hex(variant(1))


def variant_input() -> list[float]:
    return [float(i % 17) for i in range(64)]


@pytest.mark.parametrize("path", [FLOAT_MODEL, DYNAMIC_MODEL], ids=["float", "dynamic-range"])
def test_models_with_float_compute_are_refused(
    path: Any, daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    daemon = daemon_factory()
    publish_version(redis_client, keys, signing.signer, variant(1), 1)
    wait_for(lambda: serving_version(daemon) == 1, what="v1 served")
    publish_version(
        redis_client, keys, signing.signer, path.read_bytes(), 2
    )  # signed, probe matches
    wait_for(lambda: daemon.updater.updates_refused == 1, what="the refusal")
    assert serving_version(daemon) == 1
    assert "static int8" in (daemon.health().last_error or "")


def test_an_oversized_artifact_is_refused(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    daemon = daemon_factory(max_artifact_bytes=10_000)
    publish_version(redis_client, keys, signing.signer, variant(1), 1)
    wait_for(lambda: daemon.updater.updates_refused == 1, what="the refusal")
    assert daemon.chain.current is None and "cap" in (daemon.health().last_error or "")


def test_a_missing_artifact_and_a_malformed_announcement_are_refused(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    daemon = daemon_factory()
    ann = publish_version(redis_client, keys, signing.signer, variant(1), 1)
    wait_for(lambda: serving_version(daemon) == 1, what="v1 served")
    manifest = make_manifest(variant(2), 2)
    redis_client.set(keys.manifest(manifest.sha256), sign(signing.signer, manifest).to_wire())
    lost = DeltaAnnouncement(
        model="digits",
        version=2,
        sha256=manifest.sha256,
        manifest_key=keys.manifest(manifest.sha256),
        payloads=[Payload(encoding="full", key=keys.artifact(manifest.sha256), size=10)],
    )
    redis_client.xadd(keys.deltas, {"data": lost.to_wire()})
    wait_for(lambda: daemon.updater.updates_refused == 1, what="refusal of the missing artifact")
    redis_client.xadd(keys.deltas, {"data": b"{not json"})
    wait_for(lambda: daemon.updater.updates_refused == 2, what="refusal of the malformed entry")
    assert serving_version(daemon) == 1 and ann.version == 1


def test_the_newest_good_version_wins_when_the_newest_is_bad(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    publish_version(redis_client, keys, signing.signer, variant(1), 1)
    publish_version(
        redis_client, keys, signing.signer, variant(2), 2, **_unsigned(keys, signing.signer)
    )
    daemon = daemon_factory()
    wait_for(lambda: serving_version(daemon) == 1, what="v1 served")
    assert daemon.updater.updates_refused == 1


def test_announcements_for_other_models_are_ignored(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    daemon = daemon_factory()
    publish_version(redis_client, keys, signing.signer, variant(5), 1, model="other")
    publish_version(redis_client, keys, signing.signer, variant(1), 1)
    wait_for(lambda: serving_version(daemon) == 1, what="v1 served")
    assert daemon.updater.updates_refused == 0
    assert daemon.chain.current is not None and daemon.chain.current.sha256 == sha256_hex(
        variant(1)
    )


def test_the_updater_survives_a_redis_restart(
    daemon_factory: Factory,
    redis_server: Any,
    redis_client: redis.Redis,
    keys: FleetKeys,
    signing: Signing,
) -> None:
    daemon = daemon_factory()
    publish_version(redis_client, keys, signing.signer, variant(1), 1)
    wait_for(lambda: serving_version(daemon) == 1, what="v1 served")
    redis_server.stop()
    wait_for(lambda: daemon.updater.last_error is not None, what="the outage noticed")
    assert daemon.predict(variant_input()).model_version == 1  # serving never needs Redis
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        publish_version(client, keys, signing.signer, variant(2), 2)
    finally:
        client.close()
    wait_for(lambda: serving_version(daemon) == 2, timeout=20, what="v2 served after the outage")


def test_a_restarted_edge_serves_its_installed_version_without_redis(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    first = daemon_factory()
    publish_version(redis_client, keys, signing.signer, variant(1), 1)
    wait_for(lambda: serving_version(first) == 1, what="v1 served")
    publish_version(redis_client, keys, signing.signer, variant(2), 2)
    wait_for(lambda: serving_version(first) == 2, what="v2 served")
    first.stop()
    offline = daemon_factory(redis_url="redis://127.0.0.1:1/0")
    assert serving_version(offline) == 2
    lkg = offline.chain.last_known_good
    assert lkg is not None and lkg.version == 1
    assert offline.health().state == "serving"


def test_a_corrupted_current_file_falls_back_to_last_known_good_after_restart(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    first = daemon_factory()
    publish_version(redis_client, keys, signing.signer, variant(1), 1)
    wait_for(lambda: serving_version(first) == 1, what="v1 served")
    publish_version(redis_client, keys, signing.signer, variant(2), 2)
    wait_for(lambda: serving_version(first) == 2, what="v2 served")
    first.stop()
    path = first.store.model_path(sha256_hex(variant(2)))
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))

    again = daemon_factory()
    assert again.chain.current is None
    p = again.predict(variant_input())
    assert (p.model_version, p.fallback, p.fallback_reason) == (1, True, "absent")
    health = again.health()
    assert health.state == "degraded" and "unusable" in (health.last_error or "")
