"""Sentinel URLs (shared/redis_sentinel.py): parsing, the settings' checks, and one clear
error for each way a URL can lead to no primary, against real sentinels."""

from __future__ import annotations

import re

import pytest
import redis

from shared.redis_client import NoSentinelPrimary, connect_redis, hosts_of, is_tls_url
from shared.redis_sentinel import SentinelClient, parse_sentinel_url
from shared.transport import check_redis_url, redact, scrub
from tests.conftest import free_port
from tests.redis_sentinel import SERVICE, RedisSentinelPair


def test_a_sentinel_url_names_sentinels_a_service_a_database_and_two_users() -> None:
    u = parse_sentinel_url(
        "rediss+sentinel://edge%40lab:p%2Fw@[::1]:26379,10.0.0.2:26380/my-svc/3"
        "?sentinel_username=watch&sentinel_password=s3"
    )
    assert u.sentinels == [("::1", 26379), ("10.0.0.2", 26380)]
    assert (u.service, u.db, u.username, u.password) == ("my-svc", 3, "edge@lab", "p/w")
    assert (u.sentinel_username, u.sentinel_password, u.tls) == ("watch", "s3", True)
    assert parse_sentinel_url("redis+sentinel://s:1/svc").db == 0
    assert is_tls_url("rediss+sentinel://s:1/svc") and not is_tls_url("redis+sentinel://s:1/x")
    assert hosts_of("redis+sentinel://a:1,b:2/svc") == ["a", "b"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel:///lab", "names at least one sentinel"),
        ("redis+sentinel://s/lab", "needs host:port"),
        ("redis+sentinel://s:26379", "names the service"),
        ("redis+sentinel://s:26379/lab/x", "path is /<service>[/db]"),
        ("redis+sentinel://s:26379/lab?db=2", "unknown option(s) db"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_with_what_to_fix(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_sentinel_url(url)
    with pytest.raises(ValueError, match="redis_url"):
        check_redis_url(url, "development")


def test_production_takes_plaintext_only_to_loopback_sentinels() -> None:
    check_redis_url("redis+sentinel://127.0.0.1:26379,[::1]:26380/lab", "production")
    check_redis_url("rediss+sentinel://s.lab:26379/lab", "production")
    with pytest.raises(ValueError, match="plaintext to a remote host"):
        check_redis_url("redis+sentinel://127.0.0.1:26379,s.lab:26379/lab", "production")


def test_the_sentinels_password_is_masked_like_the_data_nodes() -> None:
    url = "redis+sentinel://edge:pw1@s:1/lab?sentinel_password=pw2"
    assert redact(url) == "redis+sentinel://edge:***@s:1/lab?sentinel_password=***"
    assert "pw1" not in scrub(f"{url} failed (pw2)", url)
    assert "pw2" not in scrub(f"{url} failed (pw2)", url)


def test_the_client_is_the_primarys_and_each_bad_input_is_one_clear_error(
    redis_sentinel: RedisSentinelPair,
) -> None:
    client = connect_redis(redis_sentinel.url, socket_timeout=2)
    assert isinstance(client, SentinelClient)
    assert client.set("el:{lab}:k", "v") and client.get("el:{lab}:k") == b"v"
    primary = redis_sentinel.primary()
    assert client.connection_pool.get_master_address() == ("127.0.0.1", primary)
    # a transaction and a script run on the primary as on one server
    pipe = client.pipeline()
    pipe.set("el:{lab}:n", 1)
    client.register_script("return redis.call('incrby', KEYS[1], 2)")(["el:{lab}:n"], client=pipe)
    assert pipe.execute() == [True, 3]
    assert client.set(b"el:{lab}:\xff\xfe", b"\x00") and client.delete(b"el:{lab}:\xff\xfe")
    client.delete("el:{lab}:k", "el:{lab}:n")
    client.close()

    unknown = redis_sentinel.url.replace(f"/{SERVICE}/", "/nosuch/")
    bad = connect_redis(unknown)
    with (
        bad,
        pytest.raises(NoSentinelPrimary, match=f"watch no service 'nosuch' .*watch: {SERVICE}"),
    ):
        bad.ping()
    nobody = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/{SERVICE}"
    bad = connect_redis(nobody, socket_connect_timeout=1)
    with bad, pytest.raises(NoSentinelPrimary, match=r"no sentinel at 127\.0\.0\.1:.* answers"):
        bad.ping()
    # both are outages to the callers that retry (the edge's spool, the API's 503)
    assert issubclass(NoSentinelPrimary, redis.ConnectionError)


def test_production_refuses_a_remote_primary_behind_loopback_sentinels(
    redis_sentinel: RedisSentinelPair,
) -> None:
    """The sentinels are on loopback; the primary they name is too: accepted. A client
    that takes only loopback refuses any other address (checked here with the address
    the sentinels give rewritten, as a remote primary would be named)."""
    with connect_redis(redis_sentinel.url, loopback_only=True) as client:
        assert client.ping()
    with connect_redis(redis_sentinel.url, loopback_only=True) as remote:
        remote.connection_pool.sentinel_manager._force_master_ip = "192.0.2.10"
        with pytest.raises(NoSentinelPrimary, match="production refuses plaintext"):
            remote.ping()
