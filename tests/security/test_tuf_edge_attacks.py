"""A TUF edge daemon (trusting a fleet root with a director) against attacks the other
files do not show on a real daemon: a stalled metadata download is abandoned at the
download deadline and reported, not taken for an outage; an oversized timestamp is
refused by its length, never read; an order signed by a key the root does not name is
refused and reported in the edge's status. Real redis-server, real edge daemon."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cloud.demo.stall_proxy import StallProxy
from cloud.registry.publisher import Publisher
from cloud.registry.tuf_keys import KeyDir, init_fleet
from cloud.registry.tuf_repo import TufRepository, TufSigners, load_signer
from cloud.registry.versions import MemoryBlobStore, Registry
from cloud.rollout.director import Director
from edge.daemon import EdgeDaemon
from shared.keys import FleetKeys
from shared.signing import Signer, generate_keypair
from tests.security.test_tuf_repository import _request, _serving, _url
from tests.serving import Signing, make_settings, wait_for


class Fleet:
    def __init__(self, client: redis.Redis, keys: FleetKeys, tmp: Path, signing: Signing):
        self.client, self.keys = client, keys
        self.keydir = KeyDir(tmp / "keys")
        init_fleet(client, keys, self.keydir)
        repo = TufRepository(
            client,
            keys,
            TufSigners(
                load_signer(self.keydir.file("targets")), load_signer(self.keydir.file("online"))
            ),
        )
        registry = Registry(client, keys, MemoryBlobStore())
        self.publisher = Publisher(registry, signing.signer, release="manual", tuf=repo)
        self.director = Director(client, keys, Signer.from_file(self.keydir.file("director")))


@pytest.fixture
def fleet(redis_client, keys, tmp_path, signing) -> Fleet:
    return Fleet(redis_client, keys, tmp_path, signing)


def _daemon(fleet: Fleet, tmp_path: Path, signing: Signing, url: str) -> EdgeDaemon:
    settings = make_settings(
        tmp_path,
        url,
        signing.public_key,
        tuf_root=fleet.keydir.trusted_root,
        guard_enabled=False,
        desired_poll_s=0.2,
        download_deadline_s=0.5,
    )
    return EdgeDaemon(settings)


@pytest.fixture
def proxy(redis_client) -> Iterator[StallProxy]:
    port = redis_client.connection_pool.connection_kwargs["port"]
    p = StallProxy(port)
    yield p
    p.close()


def test_a_stalled_metadata_download_is_abandoned_at_the_deadline(
    fleet, redis_client, tmp_path, signing, proxy
):
    v1 = fleet.publisher.publish(_request(1))
    fleet.director.order("digits", v1.sha256)
    url = _url(redis_client).replace(f":{proxy.upstream_port}/", f":{proxy.port}/")
    with _daemon(fleet, tmp_path, signing, url) as daemon:
        wait_for(lambda: _serving(daemon) == 1, what="v1 through the proxy")
        updater = daemon.models["digits"].updater
        proxy.stall_large.set()
        started = time.monotonic()
        fleet.publisher.publish(_request(2))  # new targets, several KiB: stalled
        wait_for(
            lambda: "SlowRetrievalError" in (updater.last_error or ""),
            what="the stalled download refused",
        )
        assert proxy.stalled.is_set() and time.monotonic() - started < 4
        assert "SlowRetrievalError" in (daemon.health().last_error or "")
        assert _serving(daemon) == 1
        # Not an outage: once the server answers, the edge takes the next order.
        proxy.stall_large.clear()
        v3 = fleet.publisher.publish(_request(3))
        fleet.director.order("digits", v3.sha256)
        wait_for(lambda: _serving(daemon) == 3, what="v3 after the stall")


def test_oversized_timestamp_refused_unread_and_wrong_key_order_reported(
    fleet, redis_client, keys, tmp_path, signing, monkeypatch
):
    v1 = fleet.publisher.publish(_request(1))
    fleet.director.order("digits", v1.sha256)
    with _daemon(fleet, tmp_path, signing, _url(redis_client)) as daemon:
        wait_for(lambda: _serving(daemon) == 1, what="v1 ordered and served")
        updater = daemon.models["digits"].updater
        key = keys.tuf_metadata("timestamp.json")
        saved = redis_client.get(key)
        redis_client.set(key, b"x" * (20 * 1024 * 1024))
        sent = int(redis_client.info("stats")["total_net_output_bytes"])
        wait_for(
            lambda: "DownloadLengthMismatchError" in (updater.last_error or ""),
            what="the oversized timestamp refused",
        )
        assert int(redis_client.info("stats")["total_net_output_bytes"]) - sent < 1024 * 1024
        redis_client.set(key, saved)

        refused = updater.updates_refused
        rogue = fleet.publisher.publish(_request(2))
        Director(redis_client, keys, Signer(generate_keypair()[0])).order("digits", rogue.sha256)
        wait_for(lambda: updater.updates_refused > refused, what="the forged order refused")
        wait_for(
            lambda: "not signed by a trusted director key" in (daemon.health().last_error or ""),
            what="the refusal in the edge's status",
        )
        time.sleep(0.6)
        assert _serving(daemon) == 1
