"""Transport security: TLS to Redis and to the API, and the plaintext production refuses.

Every process that talks to Redis (edge daemon, trainer, API, rollout controller,
the ``edgeloop token`` commands) takes its connection from ``RedisSettings``:
``redis_url`` plus, for a ``rediss://`` URL, the CA that signed the server's
certificate (``redis_ca_file``; without it the system's CAs) and, when the server
requires client certificates (``tls-auth-clients yes``), this client's own
certificate and key (``redis_cert_file``, ``redis_key_file``).

In ``mode = "production"`` a plaintext URL is refused unless it stays on this
machine (a loopback address or a unix socket): a password or an update sent in
clear across a network is the attack TLS exists to stop. The same rule holds for
the REST API's URL (``check_api_url``): HTTPS unless it is loopback.

Whatever prints a URL prints ``redact(url)``: the password never reaches a log.

>>> check_redis_url("redis://127.0.0.1:6379/0", "production")
>>> check_redis_url("rediss://:pw@cache.lab:6380/0", "production")
>>> check_redis_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", "production")
>>> check_redis_url("redis://:pw@cache.lab:6379/0", "production")
Traceback (most recent call last):
...
ValueError: redis_url redis://:***@cache.lab:6379/0 is plaintext to a remote host; production needs rediss:// (TLS; set redis_ca_file to the CA that signed the server's certificate) or a loopback or unix-socket address
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import redis
from pydantic import Field, model_validator

from shared.config import EnvFirstSettings
from shared.errors import Unavailable
from shared.redis_client import (
    CLUSTER_SCHEMES,
    SENTINEL_SCHEMES,
    connect_redis,
    hosts_of,
    is_sentinel_url,
    is_tls_url,
)

Mode = Literal["production", "development"]

#: Redis URL schemes: one server as redis-py spells it (``rediss`` is Redis over TLS),
#: or a Redis Cluster (``shared/redis_client.py``).
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", *CLUSTER_SCHEMES, *SENTINEL_SCHEMES})


def redact(url: str) -> str:
    """``url`` with any password masked, for messages and logs.

    >>> redact("redis://:s3cret@cache:6379/0")
    'redis://:***@cache:6379/0'
    >>> redact("rediss://edge:s3cret@cache:6380/0"), redact("redis://cache:6379")
    ('rediss://edge:***@cache:6380/0', 'redis://cache:6379')
    >>> redact("redis+sentinel://s:26379/lab?sentinel_password=s3cret")
    'redis+sentinel://s:26379/lab?sentinel_password=***'
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # a malformed URL: show no part of it that could be a secret
        return "<unparsable URL>"
    query = _SENTINEL_PASSWORD.sub(r"\1***", parts.query)
    if query != parts.query:
        parts = parts._replace(query=query)
    if not password:
        return urlunsplit(parts)
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


#: A Sentinel URL's ``sentinel_password=...`` query option (``shared/redis_sentinel.py``).
_SENTINEL_PASSWORD = re.compile(r"(sentinel_password=)[^&]*")


def scrub(text: str, url: str) -> str:
    """``text`` with ``url``'s password masked wherever it occurs (an error message that
    quotes the URL or its parts).

    >>> scrub("cannot connect to redis://:s3cret@h:1/0", "redis://:s3cret@h:1/0")
    'cannot connect to redis://:***@h:1/0'
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return text
    secrets = [password] if password else []
    secrets += [
        m.group(0)[len("sentinel_password=") :] for m in _SENTINEL_PASSWORD.finditer(parts.query)
    ]
    text = text.replace(url, redact(url))
    for secret in filter(None, secrets):
        text = text.replace(secret, "***")
    return text


def unreachable(url: str, error: BaseException) -> Unavailable:
    """The one-line error for a Redis at ``url`` that failed with ``error``, no password in it.

    >>> str(unreachable("redis://:pw@h:1/0", OSError("redis://:pw@h:1/0 refused")))
    'cannot reach Redis at redis://:***@h:1/0: redis://:***@h:1/0 refused'
    """
    return Unavailable(f"cannot reach Redis at {redact(url)}: {scrub(str(error), url)}")


def is_local(host: str | None) -> bool:
    """True for a host that never leaves this machine: ``localhost`` or a loopback address.

    >>> is_local("127.0.0.1"), is_local("::1"), is_local("localhost"), is_local("10.0.0.2")
    (True, True, True, False)
    """
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_redis_url(url: str, mode: str) -> None:
    """ValueError for a URL redis-py cannot use, or (in production) one in plaintext
    to another machine. The message carries the URL redacted."""
    try:
        parts = urlsplit(url)
        hosts = hosts_of(url) if parts.scheme in REDIS_SCHEMES else []
    except ValueError as e:
        raise ValueError(f"redis_url {redact(url)} is not a URL: {e}") from e
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(
            f"redis_url {redact(url)} must start with redis://, rediss:// (TLS), unix://, "
            "for a Redis Cluster redis+cluster:// or rediss+cluster:// (TLS), for a "
            "Sentinel-managed primary redis+sentinel:// or rediss+sentinel:// (TLS)"
        )
    if mode != "production" or is_tls_url(url) or parts.scheme == "unix":
        return
    if hosts and all(is_local(h) for h in hosts):
        return
    raise ValueError(
        f"redis_url {redact(url)} is plaintext to a remote host; production needs rediss:// "
        "(TLS; set redis_ca_file to the CA that signed the server's certificate) or a "
        "loopback or unix-socket address"
    )


def check_api_url(url: str, mode: str) -> None:
    """ValueError for an API URL that is not http(s), or (in production) plain HTTP to
    another machine: a bearer token would cross the network in clear.

    >>> check_api_url("https://api.lab:8443", "production")
    >>> check_api_url("http://127.0.0.1:8080", "production")
    >>> check_api_url("http://api.lab:8080", "production")
    Traceback (most recent call last):
    ...
    ValueError: api_url http://api.lab:8080 is plain HTTP to a remote host; production needs https:// (set ca_file to the CA that signed the API's certificate) or a loopback address
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as e:
        raise ValueError(f"api_url {redact(url)} is not a URL: {e}") from e
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"api_url {redact(url)} must start with https:// or http://")
    if mode != "production" or parts.scheme == "https" or is_local(host):
        return
    raise ValueError(
        f"api_url {redact(url)} is plain HTTP to a remote host; production needs https:// "
        "(set ca_file to the CA that signed the API's certificate) or a loopback address"
    )


class RedisSettings(EnvFirstSettings):
    """The Redis connection of a process's settings (a base of each settings class).

    A subclass with a ``mode`` field gets the production check; the TLS files are
    checked for existence when a process starts, so a typo fails at once.
    """

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="redis://, rediss:// (TLS) or unix:// for one server; "
        "redis+cluster://host:port[,host:port...] or rediss+cluster:// (TLS) for a Redis "
        "Cluster; redis+sentinel://host:port[,host:port...]/<service>[/db] or "
        "rediss+sentinel:// (TLS) for a Sentinel-managed primary; production refuses "
        "plaintext to a remote host",
    )
    redis_ca_file: Path | None = Field(
        None,
        description="rediss://: PEM of the CA that signed the server's certificate "
        "(default: the system's CAs)",
    )
    redis_cert_file: Path | None = Field(
        None, description="rediss://: this client's certificate (PEM), for tls-auth-clients"
    )
    redis_key_file: Path | None = Field(
        None, description="rediss://: the private key of redis_cert_file (PEM)"
    )

    @model_validator(mode="after")
    def _redis_transport(self) -> RedisSettings:
        check_redis_url(self.redis_url, str(getattr(self, "mode", "development")))
        files = (self.redis_ca_file, self.redis_cert_file, self.redis_key_file)
        if any(files) and not is_tls_url(self.redis_url):
            raise ValueError(
                f"redis_ca_file, redis_cert_file and redis_key_file are for TLS, but redis_url "
                f"{redact(self.redis_url)} is not rediss://, rediss+cluster:// or "
                "rediss+sentinel://"
            )
        if (self.redis_cert_file is None) != (self.redis_key_file is None):
            raise ValueError("redis_cert_file and redis_key_file go together: set both or neither")
        for path in files:
            if path is not None and not path.is_file():
                raise ValueError(f"{path}: no such file (a TLS setting of redis_url)")
        return self

    def redis_options(self) -> dict[str, Any]:
        """redis-py's keyword arguments for this connection's TLS (none for plaintext):
        ``connect_redis(s.redis_url, **s.redis_options())``, which ``redis_client`` does.
        In production a plaintext Sentinel URL also gets ``loopback_only``: its sentinels
        are on loopback (``check_redis_url``), and so must be the primary they name."""
        options = tls_options(
            self.redis_url, self.redis_ca_file, self.redis_cert_file, self.redis_key_file
        )
        if is_sentinel_url(self.redis_url) and getattr(self, "mode", None) == "production":
            options["loopback_only"] = True
        return options

    def redis_client(self, **options: Any) -> redis.Redis:
        """A client for ``redis_url`` (one server or a cluster) with its TLS options and
        ``options`` (timeouts...); nothing is sent until its first command."""
        return connect_redis(self.redis_url, **self.redis_options(), **options)


def tls_options(
    url: str,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> dict[str, Any]:
    """redis-py's ``ssl_*`` keyword arguments for ``url``: the server's certificate is
    always verified against ``ca_file`` (or the system's CAs), with its host name.

    >>> tls_options("redis://127.0.0.1:6379")
    {}
    >>> sorted(tls_options("rediss://cache:6380", Path("ca.pem")))
    ['ssl_ca_certs', 'ssl_cert_reqs', 'ssl_check_hostname']
    """
    if not is_tls_url(url):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if ca_file is not None:
        options["ssl_ca_certs"] = str(ca_file)
    if cert_file is not None:
        options["ssl_certfile"] = str(cert_file)
    if key_file is not None:
        options["ssl_keyfile"] = str(key_file)
    return options
