"""An edge without Redis updates through the cloud API: the same TUF files and director orders,
served by the real API on a real uvicorn server, verified by the edge's ngclient Updater and
director gate exactly as when it reads them from Redis. What the API serves is trusted for
nothing: a tampered file is refused, an oversized one is refused before its body is read, and
a stalled download is abandoned at its deadline."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import redis
import urllib3
import uvicorn

from cloud.api.app import create_app
from cloud.demo.stall_proxy import StallProxy
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.tuf_keys import KeyDir, init_fleet
from cloud.registry.tuf_repo import TufRepository, TufSigners
from cloud.registry.versions import MemoryBlobStore, Registry
from cloud.rollout.director import Director
from edge.daemon import EdgeDaemon
from edge.fleet_api import FleetApi, HttpFetcher
from edge.tuf_client import TufClient, TufRefused
from shared.codec import decode_full
from shared.keys import FleetKeys
from shared.signing import Signer
from tests.cloud.api_helpers import dev_api_settings, free_port, issue, serving
from tests.edge.helpers import make_manifest, variant
from tests.serving import make_settings, wait_for

FLEET = "lab"
METADATA = ("1.root.json", "timestamp.json", "snapshot.json", "targets.json")
#: Nothing listens here: the edge under test has no Redis at all.
NO_REDIS = "redis://127.0.0.1:1/0"


@dataclass
class HttpFleet:
    client: redis.Redis
    keys: FleetKeys
    keydir: KeyDir
    publisher: Publisher
    director: Director
    url: str
    token: str
    apis: list[FleetApi] = field(default_factory=list)  # closed before the server stops

    def close(self) -> None:
        for api in self.apis:
            api.close()

    def publish(self, content: bytes, version: int) -> str:
        m = make_manifest(content, version)
        request = PublishRequest(
            "digits", content, m.num_features, m.labels, m.probe, runtime=m.runtime
        )
        return self.publisher.publish(request).sha256

    def tuf_client(self, directory: Path, **api: Any) -> TufClient:
        fleet_api = FleetApi(self.url, self.token, **api)
        self.apis.append(fleet_api)
        return TufClient(
            None,
            self.keys,
            directory,
            self.keydir.trusted_root.read_bytes(),
            fetcher=HttpFetcher(fleet_api),
            base_urls=(fleet_api.metadata_url, fleet_api.targets_url),
        )


@pytest.fixture
def fleet(redis_client, redis_url, keys, tmp_path, signing) -> Iterator[HttpFleet]:
    keydir = KeyDir(tmp_path / "tuf-keys")
    init_fleet(redis_client, keys, keydir, root_keys=1, threshold=1)
    repo = TufRepository(
        redis_client, keys, TufSigners(keydir.signer("targets"), keydir.signer("online"))
    )
    registry = Registry(redis_client, keys, MemoryBlobStore())
    publisher = Publisher(registry, signing.signer, tuf=repo, release="manual")
    director = Director(redis_client, keys, Signer.from_file(keydir.file("director")))
    token = issue(redis_client, FLEET, "device", name="pi-1", device="pi-1")
    with serving(create_app(dev_api_settings(FLEET, redis_url, tmp_path))) as url:
        fleet = HttpFleet(redis_client, keys, keydir, publisher, director, url, token)
        yield fleet
        fleet.close()


def _sha(daemon: EdgeDaemon) -> str | None:
    current = daemon.chain.current
    return current.sha256 if current is not None else None


def test_an_http_only_edge_installs_ordered_versions_and_refuses_a_tampered_one(
    fleet, tmp_path, signing
):
    keys = fleet.keys
    sha1 = fleet.publish(variant(1), 1)
    fleet.director.order("digits", sha1)
    settings = make_settings(
        tmp_path,
        NO_REDIS,
        signing.public_key,
        update_source="http",
        api_url=fleet.url,
        api_token=fleet.token,
        tuf_root=fleet.keydir.trusted_root,
        desired_poll_s=0.2,
        guard_enabled=False,
    )
    with EdgeDaemon(settings) as daemon:
        updater = daemon.updater
        wait_for(lambda: _sha(daemon) == sha1, timeout=20, what="v1 installed over HTTP")
        assert updater.full_downloads == 1

        # v2 is signed into targets and ordered, but its bytes are tampered with where the
        # API reads them: refused through the updater's hash check; v1 keeps serving.
        sha2 = fleet.publish(variant(2), 2)
        stored = fleet.client.get(keys.artifact(sha2))
        fleet.client.set(keys.artifact(sha2), stored[:-1] + bytes([stored[-1] ^ 1]))
        for patch in fleet.client.scan_iter(keys.patch("*", sha2)):
            fleet.client.append(patch, b"x")
        fleet.director.order("digits", sha2)
        wait_for(lambda: updater.updates_refused >= 1, timeout=20, what="tampered v2 refused")
        assert "LengthOrHashMismatch" in (updater.last_error or ""), updater.last_error
        assert _sha(daemon) == sha1 and daemon.predict([0.0] * 64).model_sha256 == sha1

        # A good v3, ordered: installed over HTTP (a patch from v1, or the full file).
        sha3 = fleet.publish(variant(3), 3)
        fleet.director.order("digits", sha3)
        wait_for(lambda: _sha(daemon) == sha3, timeout=20, what="v3 installed over HTTP")
        health = daemon.health()
        assert health.tuf_root_version == 1 and not health.stale


def test_an_oversized_target_is_refused_before_its_body_is_read(fleet, tmp_path, monkeypatch):
    sha = fleet.publish(variant(1), 1)
    signed_length = fleet.client.strlen(fleet.keys.artifact(sha))
    fleet.client.append(fleet.keys.artifact(sha), b"x" * 10_000_000)
    read: list[int] = []
    real = urllib3.response.HTTPResponse.read1

    def counted(self, amt=None):  # every body byte the edge takes off the socket
        data = real(self, amt)
        read.append(len(data))
        return data

    monkeypatch.setattr(urllib3.response.HTTPResponse, "read1", counted)
    with pytest.raises(TufRefused, match="DownloadLengthMismatch"):
        fleet.tuf_client(tmp_path / "edge").download(sha)
    # Only the metadata was read: not even the signed length of the file (the library alone
    # would read past it before refusing), let alone the 10 MB.
    metadata = sum(len(fleet.client.get(fleet.keys.tuf_metadata(n))) for n in METADATA)
    assert 0 < sum(read) <= metadata < signed_length


#: The edges' download deadline in the stalled-download test.
DEADLINE_S = 3.0


def test_a_download_over_http_is_verified_and_a_stalled_one_abandoned(fleet, tmp_path):
    # a model with 50 KB of random padding (ignored by TFLite) that zstd cannot shrink
    content = variant(0) + random.Random(0).randbytes(50_000)
    sha = fleet.publish(content, 1)
    # a deadline with room for a busy machine (the API answers from this process)
    edge = fleet.tuf_client(tmp_path / "edge", deadline_s=DEADLINE_S)
    assert decode_full(edge.download(sha).artifact) == content

    port = int(fleet.url.rsplit(":", 1)[1])
    proxy = StallProxy(port, threshold=4096)
    try:
        stalled = FleetApi(f"http://127.0.0.1:{proxy.port}", fleet.token, deadline_s=DEADLINE_S)
        fleet.apis.append(stalled)
        edge = TufClient(
            None,
            fleet.keys,
            tmp_path / "edge-2",
            fleet.keydir.trusted_root.read_bytes(),
            fetcher=HttpFetcher(stalled),
            base_urls=(stalled.metadata_url, stalled.targets_url),
        )
        edge.refresh()
        proxy.stall_large.set()
        started = time.monotonic()
        with pytest.raises(TufRefused, match="SlowRetrieval"):
            edge.download(sha, refresh=False)
        assert time.monotonic() - started < 2 * DEADLINE_S and proxy.stalled.is_set()
    finally:
        proxy.close()


def test_over_https_the_api_is_verified_against_the_fleets_ca(fleet, redis_url, tmp_path, pki):
    sha = fleet.publish(variant(1), 1)
    app = create_app(dev_api_settings(FLEET, redis_url, tmp_path / "https"))
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning",
        ssl_certfile=str(pki.server_cert), ssl_keyfile=str(pki.server_key),
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="the HTTPS API")
        url = f"https://127.0.0.1:{port}"
        trusted = replace(fleet, url=url, apis=[])
        edge = trusted.tuf_client(tmp_path / "edge", ca_file=pki.ca)
        assert edge.download(sha).signed.manifest().sha256 == sha
        # A client that does not trust the fleet's CA never gets a byte.
        stranger = trusted.tuf_client(tmp_path / "edge-2", ca_file=pki.other_ca)
        with pytest.raises(TufRefused, match="unreachable"):
            stranger.refresh()
    finally:
        trusted.close()
        server.should_exit = True
        thread.join(10)


def test_the_api_serves_the_repository_to_device_tokens_only_for_their_own_orders(fleet):
    http = urllib3.PoolManager()
    auth = {"Authorization": f"Bearer {fleet.token}"}
    sha = fleet.publish(variant(1), 1)
    fleet.director.order("digits", sha)
    assert http.request("GET", f"{fleet.url}/v1/tuf/timestamp.json", headers=auth).status == 200
    assert http.request("GET", f"{fleet.url}/v1/tuf/1.root.json", headers=auth).status == 200
    assert http.request("GET", f"{fleet.url}/v1/tuf/2.root.json", headers=auth).status == 404
    assert http.request("GET", f"{fleet.url}/v1/tuf/timestamp.json").status == 401
    target = f"{fleet.url}/v1/tuf/targets/artifacts/{sha}"
    assert http.request("GET", target, headers=auth).data == fleet.client.get(
        fleet.keys.artifact(sha)
    )
    for bad in ("../etc/passwd", "tokens.json", "targets/artifacts/abc"):
        assert http.request("GET", f"{fleet.url}/v1/tuf/{bad}", headers=auth).status in (404, 422)
    own = http.request("GET", f"{fleet.url}/v1/director/digits/pi-1", headers=auth)
    assert own.status == 200 and own.json()["fleet_order"] is not None
    other = http.request("GET", f"{fleet.url}/v1/director/digits/pi-2", headers=auth)
    assert other.status == 403


def test_http_updates_need_the_api_and_a_tuf_root(tmp_path, signing):
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="tuf_root"):
        make_settings(
            tmp_path, NO_REDIS, signing.public_key, update_source="http",
            api_url="http://127.0.0.1:8080", api_token="elt_x",
        )  # fmt: skip
    with pytest.raises(ConfigError, match="api_url and api_token"):
        make_settings(tmp_path, NO_REDIS, signing.public_key, update_source="http")
    with pytest.raises(ConfigError, match="plain HTTP"):
        make_settings(
            tmp_path, NO_REDIS, signing.public_key, update_source="http", mode="production",
            api_url="http://api.lab:8080", api_token="elt_x", tuf_root=tmp_path / "root.json",
        )  # fmt: skip
