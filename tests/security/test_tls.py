"""Redis over TLS between real processes, HTTPS for the API, and plaintext refused in production.

The redis-servers speak only TLS with a certificate from a CA made in the test
(``conftest.py``); the edge, the trainer's registry, the API and the CLI connect
with ``rediss://`` and the CA from their settings, as an operator configures them.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import uvicorn
from fastapi.testclient import TestClient

from cloud.api.app import create_app
from cloud.api.settings import ApiSettings
from cloud.cli.main import main as edgeloop
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.versions import DirBlobStore, Registry
from cloud.trainer.settings import TrainerSettings
from edge.cli import check as edge_check
from edge.daemon import EdgeDaemon
from edge.settings import BUNDLED_BASELINE, EdgeSettings
from shared.config import load_settings
from shared.errors import ConfigError
from shared.keys import FleetKeys
from shared.messages import ProbeSet
from shared.runtime import TFLiteModel
from shared.signing import Signer, write_keypair
from tests.cloud.api_helpers import PEPPER, bearer, issue
from tests.redis_cluster import RedisClusterNodes, Secure
from tests.security.conftest import FLEET, USERS, TlsRedis, _acl_file, free_port
from tests.security.pki import Pki


def _edge_settings(tls: TlsRedis | None, tmp_path: Path, **overrides: Any) -> EdgeSettings:
    values: dict[str, Any] = {
        "mode": "production",
        "device_id": "pi-1",
        "fleet": FLEET,
        **({"redis_url": tls.url("edge"), "redis_ca_file": tls.pki.ca} if tls else {}),
        "public_key": tmp_path / "keys" / "signing.pub",
        "state_dir": tmp_path / "edge",
        "status_interval_s": 0.2,
        "feedback_flush_ms": 10,
        "warmup_invokes": 1,
    }
    return load_settings(EdgeSettings, None, **{**values, **overrides})


def _publish(client: redis.Redis, tmp_path: Path) -> str:
    write_keypair(tmp_path / "keys")
    registry = Registry(client, FleetKeys(FLEET), DirBlobStore(tmp_path / "blobs"))
    content = BUNDLED_BASELINE.read_bytes() + b"\0"
    inputs = np.zeros((2, 64), dtype=np.float32)
    probe = ProbeSet(
        inputs=inputs.tolist(), expected=TFLiteModel(content).predict_proba_batch(inputs).tolist()
    )
    # the trainer user may not set the target: the edge follows the announcement
    publisher = Publisher(
        registry, Signer.from_file(tmp_path / "keys" / "signing.key"), release="manual"
    )
    labels = [str(i) for i in range(10)]
    request = PublishRequest("digits", content, 64, labels, probe, runtime="ai-edge-litert")
    return publisher.publish(request).sha256


def test_an_edge_takes_an_update_and_sends_feedback_over_tls_only(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    keys = FleetKeys(FLEET)
    # The trainer's side, connected as a production trainer is configured.
    trainer = TrainerSettings(
        redis_url=tls_redis.url("trainer"),
        redis_ca_file=tls_redis.pki.ca,
        signing_key=tmp_path / "keys" / "signing.key",
        fleet=FLEET,
    )
    client = redis.Redis.from_url(trainer.redis_url, **trainer.redis_options())
    sha = _publish(client, tmp_path)

    _install_and_send_feedback(_edge_settings(tls_redis, tmp_path), sha, within=20)
    sent = client.xlen(keys.feedback_of("digits")) + client.xlen(keys.feedback)
    assert sent >= 1
    assert client.exists(keys.device("pi-1"))

    # The API reads the same Redis over TLS.
    api = ApiSettings(
        mode="development",
        fleet=FLEET,
        redis_url=tls_redis.url("api"),
        redis_ca_file=tls_redis.pki.ca,
        blob_dir=tmp_path / "blobs",
        public_key=tmp_path / "keys" / "signing.pub",
        token_pepper=PEPPER,
        controller_interval_s=0,
    )
    with TestClient(create_app(api)) as http:
        assert http.get("/healthz").json()["redis"] == "ok"
        token = issue(tls_redis.client("admin"), FLEET, "viewer")  # the trainer may not
        versions = http.get("/v1/models/digits/versions", headers=bearer(token)).json()
        assert versions["versions"][0]["sha256"] == sha
    client.close()


def test_a_client_without_the_ca_or_in_plaintext_is_refused(
    tls_redis: TlsRedis, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = tls_redis.url("edge")
    for client in (
        redis.Redis.from_url(url),  # the system's CAs
        redis.Redis.from_url(url, ssl_ca_certs=str(pki.other_ca)),
    ):
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            client.ping()
        client.close()
    plaintext = redis.Redis.from_url(
        tls_redis.url("edge").replace("rediss://", "redis://"), socket_timeout=2
    )
    with pytest.raises(redis.ConnectionError):
        plaintext.ping()
    plaintext.close()

    # An edge configured without the CA: unhealthy, in one line without the password.
    write_keypair(tmp_path / "keys")
    settings = _edge_settings(tls_redis, tmp_path, redis_ca_file=None)
    assert edge_check(settings) != 0
    out = capsys.readouterr().out
    assert "CERTIFICATE_VERIFY_FAILED" in out and "pw-edge" not in out
    assert "rediss://edge:***@127.0.0.1" in out


def test_a_client_certificate_is_required_when_the_server_asks_for_one(
    mtls_redis: TlsRedis,
    pki: Pki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    without = mtls_redis.client()
    with pytest.raises(redis.ConnectionError):
        without.ping()
    without.close()

    # The API's settings with a client certificate: `edgeloop token issue` works over it.
    monkeypatch.setenv("EDGELOOP_API_MODE", "production")
    monkeypatch.setenv("EDGELOOP_API_REDIS_URL", mtls_redis.url())
    monkeypatch.setenv("EDGELOOP_API_REDIS_CA_FILE", str(pki.ca))
    monkeypatch.setenv("EDGELOOP_API_REDIS_CERT_FILE", str(pki.client_cert))
    monkeypatch.setenv("EDGELOOP_API_REDIS_KEY_FILE", str(pki.client_key))
    monkeypatch.setenv("EDGELOOP_API_TOKEN_PEPPER", PEPPER)
    monkeypatch.setenv("EDGELOOP_API_PUBLIC_KEY", str(pki.ca))  # any readable file
    assert edgeloop(["token", "issue", "--role", "viewer", "--name", "ops", "--ttl", "1h"]) == 0
    assert capsys.readouterr().out.startswith("elt_")

    # Without the client key the same command fails in one line, no traceback.
    monkeypatch.delenv("EDGELOOP_API_REDIS_CERT_FILE")
    monkeypatch.delenv("EDGELOOP_API_REDIS_KEY_FILE")
    assert edgeloop(["token", "list"]) != 0
    err = capsys.readouterr().err
    assert "cannot reach Redis at rediss://127.0.0.1" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "cls, fields",
    [
        (EdgeSettings, {"public_key": "KEY", "state_dir": "/var/lib/edgeloop"}),
        (TrainerSettings, {"signing_key": "KEY"}),
        (ApiSettings, {"public_key": "KEY", "token_pepper": PEPPER}),
    ],
)
def test_production_refuses_plaintext_to_a_remote_redis(
    cls: type[EdgeSettings | TrainerSettings | ApiSettings],
    fields: dict[str, Any],
    tmp_path: Path,
) -> None:
    key = tmp_path / "key.pem"
    key.write_text("not read here")
    key.chmod(0o644)
    fields = {k: key if v == "KEY" else v for k, v in fields.items()}
    remote = "redis://edge:s3cret-pw@cache.lab.internal:6379/0"
    with pytest.raises(ConfigError, match="plaintext to a remote host") as e:
        load_settings(cls, None, mode="production", redis_url=remote, **fields)
    assert "s3cret-pw" not in str(e.value) and "edge:***@cache.lab.internal" in str(e.value)
    # TLS, loopback and development are accepted.
    for mode, url in [
        ("production", "rediss://edge:pw@cache.lab.internal:6380/0"),
        ("production", "redis://127.0.0.1:6379/0"),
        ("development", remote),
    ]:
        load_settings(cls, None, mode=mode, redis_url=url, **fields)


def test_production_refuses_plaintext_http_to_a_remote_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("EDGELOOP_MODE", raising=False)
    assert edgeloop(["versions", "--api", "http://api.lab.internal:8080"]) == 2
    err = capsys.readouterr().err
    assert "plain HTTP to a remote host" in err and "https://" in err
    # Nor does a production API listen on a network address without TLS.
    with pytest.raises(ConfigError, match="no TLS"):
        load_settings(
            ApiSettings,
            None,
            host="0.0.0.0",
            public_key=tmp_path / "signing.pub",
            token_pepper=PEPPER,
        )


@contextmanager
def _https(app: Any, pki: Pki) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ssl_certfile=pki.server_cert,
        ssl_keyfile=pki.server_key,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_api_serves_https_and_the_cli_verifies_it(
    redis_url: str,
    redis_client: redis.Redis,
    pki: Pki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = load_settings(
        ApiSettings,
        None,
        host="0.0.0.0",
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        public_key=tmp_path / "none.pub",
        mode="development",
        fleet="lab",
        redis_url=redis_url,
        blob_dir=tmp_path / "blobs",
        token_pepper=PEPPER,
        controller_interval_s=0,
    )
    assert settings.scheme == "https"
    with _https(create_app(settings), pki) as url:
        trusted = ssl.create_default_context(cafile=str(pki.ca))
        assert httpx.get(f"{url}/healthz", verify=trusted).status_code == 200
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/healthz")
        monkeypatch.setenv("EDGELOOP_TOKEN", issue(redis_client, "lab", "viewer"))
        monkeypatch.setenv("EDGELOOP_CA_FILE", str(pki.ca))
        assert edgeloop(["versions", "--api", url, "--json"]) == 0
        assert '"models":[]' in capsys.readouterr().out
        monkeypatch.delenv("EDGELOOP_CA_FILE")
        assert edgeloop(["versions", "--api", url]) == 2
        assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err


@pytest.fixture
def tls_cluster(tmp_path: Path, pki: Pki) -> Iterator[RedisClusterNodes]:
    """A Redis Cluster speaking only TLS, on every link, with the shipped ACL on each node."""
    secure = Secure(
        ca=pki.ca,
        cert=pki.server_cert,
        key=pki.server_key,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        aclfile=_acl_file(tmp_path),
        admin_user="admin",
        passwords={u: f"pw-{u}" for u in USERS},
    )
    cluster = RedisClusterNodes(tmp_path / "cluster", secure)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_an_edge_a_trainer_and_the_api_work_over_a_tls_cluster_with_the_shipped_acl(
    tls_cluster: RedisClusterNodes, tmp_path: Path
) -> None:
    keys = FleetKeys(FLEET)
    assert tls_cluster.secure is not None
    ca = tls_cluster.secure.ca
    trainer = TrainerSettings(
        redis_url=tls_cluster.url_as("trainer"),
        redis_ca_file=ca,
        signing_key=tmp_path / "keys" / "signing.key",
        fleet=FLEET,
    )
    client = trainer.redis_client()
    sha = _publish(client, tmp_path)
    edge = _edge_settings(None, tmp_path, redis_url=tls_cluster.url_as("edge"), redis_ca_file=ca)
    _install_and_send_feedback(edge, sha, within=30)
    assert client.xlen(keys.feedback_of("digits")) + client.xlen(keys.feedback) >= 1
    assert client.exists(keys.device("pi-1"))
    api = ApiSettings(
        mode="development",
        fleet=FLEET,
        redis_url=tls_cluster.url_as("api"),
        redis_ca_file=ca,
        blob_dir=tmp_path / "blobs",
        public_key=tmp_path / "keys" / "signing.pub",
        token_pepper=PEPPER,
        controller_interval_s=0,
    )
    with TestClient(create_app(api)) as http:
        assert http.get("/healthz").json()["redis"] == "ok"
    client.close()


def _install_and_send_feedback(settings: EdgeSettings, sha: str, *, within: float) -> None:
    """An edge daemon installs version ``sha`` within ``within`` s, answers one request
    and sends its truth."""
    with EdgeDaemon(settings) as daemon:
        deadline = time.monotonic() + within
        while daemon.health().sha256 != sha:
            assert time.monotonic() < deadline, daemon.health().last_error
            time.sleep(0.05)
        x = np.zeros(64, dtype=np.float32)
        daemon.feedback(3, request_id=daemon.predict(x).request_id)
        assert daemon.uplink.flush(10)
