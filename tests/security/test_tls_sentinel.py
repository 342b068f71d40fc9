"""A Sentinel-managed pair speaking only TLS, with the shipped ACL on both data nodes
and a password on the sentinels: ``rediss+sentinel://`` with the same ``redis_ca_file``
as ``rediss://`` reaches the sentinels and the primary, as the edge's ACL user."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cloud.registry.devices import DeviceRegistry
from shared.keys import FleetKeys
from shared.redis_client import NoSentinelPrimary, connect_redis
from shared.transport import tls_options
from tests.redis_cluster import Secure
from tests.redis_sentinel import RedisSentinelPair
from tests.security.conftest import FLEET, USERS, _acl_file
from tests.security.pki import Pki
from tests.serving import wait_for


@pytest.fixture
def tls_pair(tmp_path: Path, pki: Pki) -> Iterator[RedisSentinelPair]:
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
    pair = RedisSentinelPair(tmp_path / "pair", secure, sentinel_password="pw-sentinels")
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()


def test_an_edge_user_and_an_enrolment_over_tls_sentinels(
    tls_pair: RedisSentinelPair, pki: Pki
) -> None:
    keys = FleetKeys(FLEET)
    url = tls_pair.url_as("edge")
    edge = connect_redis(url, **tls_options(url, pki.ca), socket_timeout=2)
    edge.xadd(keys.feedback_of("digits"), {"frames": b"x"})
    admin_url = tls_pair.url_as("admin")
    admin = connect_redis(admin_url, **tls_options(admin_url, pki.ca), socket_timeout=2)
    assert admin.xlen(keys.feedback_of("digits")) == 1
    # ACL SETUSER reaches the replica over TLS too
    creds = DeviceRegistry(admin, keys).enroll("pi-t")
    for port in tls_pair.ports:
        with tls_pair.node(port) as node:
            assert node.acl_getuser(creds.acl_user) is not None
    # the sentinels' password is theirs: without it no sentinel answers
    no_pw = admin_url.partition("?")[0]
    bad = connect_redis(no_pw, **tls_options(no_pw, pki.ca), socket_timeout=2)
    with bad, pytest.raises(NoSentinelPrimary, match=r"no sentinel at .* answers.*(auth|AUTH)"):
        bad.ping()
    # plaintext to TLS-only sentinels: none answers
    plain = admin_url.replace("rediss+", "redis+")
    bad = connect_redis(plain, socket_timeout=1, socket_connect_timeout=1)
    with bad, pytest.raises(NoSentinelPrimary, match="no sentinel at"):
        bad.ping()
    # a failover over TLS (the sentinels log in to the data nodes as admin): the same
    # clients go on with the promoted replica, where the device's user already is
    primary = tls_pair.primary()
    tls_pair.kill(primary)
    wait_for(lambda: tls_pair.named_primary() not in (None, primary), 30, "a promotion")
    wait_for(lambda: _added(edge, keys), 10, "the edge's XADD on the new primary")
    assert admin.xlen(keys.feedback_of("digits")) >= 2
    device = tls_pair.url_as(creds.acl_user, creds.password)
    with connect_redis(device, **tls_options(device, pki.ca)) as client:
        assert client.ping()
    edge.close()
    admin.close()


def _added(edge: redis.Redis, keys: FleetKeys) -> bool:
    try:
        return bool(edge.xadd(keys.feedback_of("digits"), {"frames": b"y"}))
    except redis.ConnectionError:
        return False
