"""Fixtures of the attack tests: a CA made here, real redis-servers speaking only TLS.

- ``tls_redis``: TLS only (no plaintext port), server certificate from the test CA,
  the shipped ACL (``deploy/cloud/users.acl``, each user's placeholder hash replaced
  by the hash of ``pw-<user>``). One per session, flushed per test.
- ``mtls_redis``: TLS only and ``tls-auth-clients yes``: a client without a
  certificate from the CA is refused. One per session.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.transport import tls_options
from tests.conftest import free_port, wait_answering
from tests.security.pki import Pki, make_pki

ACL = Path(__file__).resolve().parents[2] / "deploy" / "cloud" / "users.acl"
USERS = ("admin", "trainer", "api", "edge")
#: The fleet the shipped ACL is written for.
FLEET = "default"

collect_ignore = ["conftest.py"]


@dataclass
class TlsRedis:
    port: int
    pki: Pki
    proc: subprocess.Popen[bytes]
    users: bool

    def url(self, user: str | None = None) -> str:
        auth = f"{user}:pw-{user}@" if user else ""
        return f"rediss://{auth}127.0.0.1:{self.port}/0"

    def client(self, user: str | None = None, **options: Any) -> redis.Redis:
        """A client that trusts the test CA (``options`` add or replace ``ssl_*``)."""
        url = self.url(user)
        return redis.Redis.from_url(url, **{**tls_options(url, self.pki.ca), **options})


def _acl_file(directory: Path) -> Path:
    lines = []
    for line in ACL.read_text().splitlines():
        user = line.split()[1]
        digest = hashlib.sha256(f"pw-{user}".encode()).hexdigest()
        lines.append(line.replace("#" + "0" * 64, "#" + digest))
    path = directory / "users.acl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _start(directory: Path, pki: Pki, *, auth_clients: str, acl: bool) -> TlsRedis:
    port = free_port()
    args = [
        shutil.which("redis-server") or "redis-server",
        "--port", "0",
        "--tls-port", str(port),
        "--bind", "127.0.0.1",
        "--tls-cert-file", str(pki.server_cert),
        "--tls-key-file", str(pki.server_key),
        "--tls-ca-cert-file", str(pki.ca),
        "--tls-auth-clients", auth_clients,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
    ]  # fmt: skip
    if acl:
        args += ["--aclfile", str(_acl_file(directory))]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = TlsRedis(port, pki, proc, users=acl)
    options = (
        {"ssl_certfile": str(pki.client_cert), "ssl_keyfile": str(pki.client_key)}
        if auth_clients == "yes"
        else {}
    )
    client = server.client("admin" if acl else None, **options)
    wait_answering(client, proc, "the TLS redis-server")
    client.close()
    return server


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsRedis]:
    server = _start(tmp_path_factory.mktemp("tls-redis"), pki, auth_clients="no", acl=True)
    yield server
    server.proc.terminate()
    server.proc.wait(10)


@pytest.fixture
def tls_redis(tls_server: TlsRedis) -> TlsRedis:
    """The session's TLS redis-server with the shipped ACL, flushed."""
    admin = tls_server.client("admin")
    admin.flushall()
    admin.close()
    return tls_server


@pytest.fixture(scope="session")
def mtls_redis(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsRedis]:
    server = _start(tmp_path_factory.mktemp("mtls-redis"), pki, auth_clients="yes", acl=False)
    yield server
    server.proc.terminate()
    server.proc.wait(10)
