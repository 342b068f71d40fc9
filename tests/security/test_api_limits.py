"""The REST API's limits against real requests: tokens expire, and a chunked body over
the cap is refused (413) without being read whole and before any auth work."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from cloud.api.app import create_app
from cloud.api.settings import ApiSettings
from cloud.api.tokens import TokenStore
from cloud.cli.main import main as edgeloop
from shared.keys import FleetKeys
from shared.signing import write_keypair
from tests.cloud.api_helpers import PEPPER, bearer, dev_api_settings, issue, serving

FLEET = "lab"


def _production(redis_url: str, tmp_path: Path) -> ApiSettings:
    write_keypair(tmp_path / "keys")
    return ApiSettings(
        mode="production",
        fleet=FLEET,
        redis_url=redis_url,
        blob_dir=tmp_path / "blobs",
        public_key=tmp_path / "keys" / "signing.pub",
        token_pepper=PEPPER,
        controller_interval_s=0,
    )


def test_an_expired_token_is_a_401_that_says_so(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    store = TokenStore(redis_client, FleetKeys(FLEET), PEPPER.encode())
    _, forever = store.issue("forever", "viewer", never_expires=True)
    with TestClient(create_app(_production(redis_url, tmp_path))) as http:
        # issued once the API is up, and long enough for one request on a busy machine
        record, short = store.issue("short", "viewer", ttl_s=2.0)
        assert http.get("/v1/fleet", headers=bearer(short)).status_code == 200
        assert record.expires_at is not None
        time.sleep(max(0.0, record.expires_at - time.time()) + 0.05)
        r = http.get("/v1/fleet", headers=bearer(short))
        assert r.status_code == 401 and "expired at" in r.json()["detail"]
        assert "edgeloop token issue --ttl" in r.json()["detail"]
        # A token without an expiry works only against a development API.
        r = http.get("/v1/fleet", headers=bearer(forever))
        assert r.status_code == 401 and "has no expiry" in r.json()["detail"]
        # Tokens issued over the API expire too.
        admin = issue(redis_client, FLEET, "admin")
        r = http.post(
            "/v1/tokens",
            json={"name": "ci", "role": "viewer", "ttl_s": 3600},
            headers=bearer(admin),
        )
        assert r.status_code == 201
        assert r.json()["expires_at"] == pytest.approx(time.time() + 3600, abs=60)
    with TestClient(create_app(dev_api_settings(FLEET, redis_url, tmp_path))) as http:
        assert http.get("/v1/fleet", headers=bearer(forever)).status_code == 200


def test_token_issue_takes_a_ttl_and_never_is_for_development(
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = _production(redis_url, tmp_path)
    monkeypatch.setenv("EDGELOOP_API_REDIS_URL", redis_url)
    monkeypatch.setenv("EDGELOOP_API_FLEET", FLEET)
    monkeypatch.setenv("EDGELOOP_API_PUBLIC_KEY", str(settings.public_key))
    monkeypatch.setenv("EDGELOOP_API_TOKEN_PEPPER", PEPPER)
    argv = ["token", "issue", "--role", "viewer", "--json"]
    assert edgeloop([*argv, "--name", "a", "--ttl", "30d"]) == 0
    issued = json.loads(capsys.readouterr().out)
    assert issued["expires_at"] == pytest.approx(time.time() + 30 * 86400, abs=60)
    assert edgeloop([*argv, "--name", "b"]) == 0  # the API's token_ttl_s: 90 days
    assert json.loads(capsys.readouterr().out)["expires_at"] > time.time() + 89 * 86400
    assert edgeloop([*argv, "--name", "c", "--ttl", "never"]) == 2
    assert "development only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        edgeloop([*argv, "--name", "d", "--ttl", "soon"])
    assert "is not a duration" in capsys.readouterr().err
    monkeypatch.setenv("EDGELOOP_API_MODE", "development")
    assert edgeloop([*argv, "--name", "e", "--ttl", "never"]) == 0
    assert json.loads(capsys.readouterr().out)["expires_at"] is None


def _chunked(port: int, path: str, chunks: int, chunk: bytes, headers: str = "") -> bytes:
    """Send ``chunks`` chunks of a body that never ends, then read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n{headers}\r\n".encode()
        )
        try:
            for _ in range(chunks):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: what we want
        answer = b""
        while not answer.endswith(b"}") and (data := s.recv(65536)):
            answer += data
        return answer


def test_a_chunked_body_over_the_cap_is_a_413_before_auth(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = dev_api_settings(FLEET, redis_url, tmp_path, max_body_bytes=64 * 1024)
    with serving(create_app(settings)) as url:
        port = int(url.rsplit(":", 1)[1])
        # 1 MiB offered, no Content-Length, no token, the body never terminated: the
        # answer comes after the cap, so the rest was never waited for.
        answer = _chunked(port, "/v1/feedback", 64, b"x" * 16384)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"over 65536 bytes" in answer
        # Under the cap, a chunked body reaches the route whole.
        admin = issue(redis_client, FLEET, "admin")
        body = json.dumps({"name": "chunked", "role": "viewer", "ttl_s": 60}).encode()
        r = httpx.post(
            f"{url}/v1/tokens",
            content=iter([body[:10], body[10:]]),  # an iterator: sent chunked
            headers={**bearer(admin), "Content-Type": "application/json"},
        )
        assert r.status_code == 201 and r.json()["name"] == "chunked"
        assert "content-length" not in r.request.headers
