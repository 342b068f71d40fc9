"""Patches on the edge: applied from the served version, refused on any doubt, full file instead."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import redis
from helpers import publish_version, same_size_variant

from edge.daemon import EdgeDaemon
from shared.codec import encode_full, sha256_hex
from shared.delta import make_patch
from shared.keys import FleetKeys
from tests.serving import Signing, wait_for

Factory = Callable[..., EdgeDaemon]

V1, V2, V3 = (same_size_variant(n) for n in (1, 2, 3))
SHA1 = sha256_hex(V1)


def serving(daemon: EdgeDaemon) -> int | None:
    current = daemon.chain.current
    return current.version if current else None


@pytest.fixture
def on_v1(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> EdgeDaemon:
    """An edge serving V1, which it fetched as a full file."""
    publish_version(redis_client, keys, signing.signer, V1, 1)
    daemon = daemon_factory()
    wait_for(lambda: serving(daemon) == 1, what="v1 served")
    assert daemon.updater.full_downloads == 1
    return daemon


def test_a_patch_from_the_served_version_is_applied(
    on_v1: EdgeDaemon, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    daemon = on_v1
    before = daemon.updater.bytes_downloaded
    patch = make_patch(V1, V2)
    publish_version(redis_client, keys, signing.signer, V2, 2, patches={SHA1: patch})
    wait_for(lambda: serving(daemon) == 2, what="v2 served")
    u = daemon.updater
    assert (u.patches_applied, u.full_downloads, u.patch_failures) == (1, 1, 0)
    assert u.bytes_downloaded - before == len(patch) < len(encode_full(V2)) // 20
    assert daemon.store.load(sha256_hex(V2)).data == V2
    counters = daemon.health().counters
    assert (counters.patches_applied, counters.full_downloads) == (1, 1)

    def reported() -> bool:
        raw = redis_client.get(keys.device("pi-1"))
        return raw is not None and json.loads(raw)["counters"]["patches_applied"] == 1

    wait_for(reported, what="patch counters in the status report")


def _other_base() -> bytes:
    return make_patch(V3, V2)  # a sound patch, made against another file


def _corrupted() -> bytes:
    patch = bytearray(make_patch(V1, V2))
    patch[-6] ^= 0x40
    return bytes(patch)


def _truncated() -> bytes:
    patch = make_patch(V1, V2)
    return patch[: len(patch) - 3]


def _builds_another_file() -> bytes:
    return make_patch(V1, V3)  # right base, but the result is not the announced version


PATCH_FAILURES = {
    "made against another base": (_other_base, "patch applies to base"),
    "corrupted": (_corrupted, "does not decompress"),
    "truncated": (_truncated, "does not decompress"),
    "builds another file": (_builds_another_file, "hashes to"),
    "key missing": (lambda: None, "not in Redis"),
}


@pytest.mark.parametrize("case", list(PATCH_FAILURES))
def test_a_bad_patch_is_refused_and_the_full_file_fetched(
    case: str,
    on_v1: EdgeDaemon,
    redis_client: redis.Redis,
    keys: FleetKeys,
    signing: Signing,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make, message = PATCH_FAILURES[case]
    daemon = on_v1
    publish_version(redis_client, keys, signing.signer, V2, 2, patches={SHA1: make()})
    wait_for(lambda: serving(daemon) == 2, what="v2 served from the full file")
    u = daemon.updater
    assert (u.patches_applied, u.full_downloads, u.patch_failures, u.updates_refused) == (
        0,
        2,
        1,
        0,
    )
    assert daemon.store.load(sha256_hex(V2)).data == V2
    lines = [r.getMessage() for r in caplog.records if "fetching the full file" in r.getMessage()]
    assert len(lines) == 1 and message in lines[0]


def test_a_bad_patch_with_no_good_full_file_keeps_the_old_model_until_a_good_version(
    on_v1: EdgeDaemon, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    daemon = on_v1
    publish_version(
        redis_client,
        keys,
        signing.signer,
        V2,
        2,
        patches={SHA1: _corrupted()},
        artifact=encode_full(V2)[:100],
    )
    wait_for(lambda: daemon.updater.updates_refused == 1, what="v2 refused")
    assert serving(daemon) == 1 and daemon.store.current == SHA1
    assert daemon.predict([float(i % 17) for i in range(64)]).model_version == 1
    assert daemon.updater.patch_failures == 1
    publish_version(redis_client, keys, signing.signer, V3, 3, patches={SHA1: make_patch(V1, V3)})
    wait_for(lambda: serving(daemon) == 3, what="v3 served")
    assert daemon.updater.patches_applied == 1
    assert sorted(daemon.store.stored()) == sorted([SHA1, sha256_hex(V3)])


def test_a_patch_from_a_version_the_edge_does_not_serve_is_ignored(
    on_v1: EdgeDaemon, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> None:
    daemon = on_v1
    publish_version(
        redis_client, keys, signing.signer, V2, 2, patches={sha256_hex(V3): make_patch(V3, V2)}
    )
    wait_for(lambda: serving(daemon) == 2, what="v2 served")
    u = daemon.updater
    assert (u.patches_applied, u.full_downloads, u.patch_failures) == (0, 2, 0)
