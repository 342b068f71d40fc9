"""A Sentinel-managed primary and its replicas, for users who need no Redis Cluster.

The URL names the sentinels (one or more, comma-separated) and the service they
watch; ``connect_redis`` (``shared/redis_client.py``) takes it like any other::

    redis+sentinel://[user:password@]host:port[,host:port...]/<service>[/db]
        [?sentinel_username=NAME&sentinel_password=SECRET]
    rediss+sentinel://...   (TLS to the sentinels and to the primary)

``user:password`` are the data nodes' credentials (an edge's ACL user, the
``trainer`` user...), as in every other URL; the sentinels are asked with none,
or with ``sentinel_username``/``sentinel_password`` when they require it (their
users are their own, apart from the data nodes'). The client is redis-py's
``Sentinel(...).master_for(service)``: a plain ``redis.Redis`` whose connections ask
the sentinels for the primary's address when they (re)connect, so after a failover
the next connection goes to the promoted replica, and a connection to a demoted
primary is dropped at its first READONLY reply. Pipelines, transactions and scripts
are one server's.

ACL users are per server and not replicated: ``ACL SETUSER``, ``DELUSER`` and
``SAVE`` through a ``SentinelClient`` run on the primary and on every replica the
sentinels list, so an enrolled device's user exists on the replica that a failover
promotes.

>>> u = parse_sentinel_url("redis+sentinel://edge:pw@10.0.0.1:26379,10.0.0.2:26379/lab/2")
>>> u.sentinels, u.service, u.db, u.username, u.tls
([('10.0.0.1', 26379), ('10.0.0.2', 26379)], 'lab', 2, 'edge', False)
>>> parse_sentinel_url("rediss+sentinel://s:26379/lab?sentinel_password=x").sentinel_password
'x'
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.sentinel import MasterNotFoundError, Sentinel

from shared.errors import BadRedisURL

__all__ = [
    "SENTINEL_SCHEMES",
    "NoSentinelPrimary",
    "SentinelClient",
    "SentinelURL",
    "connect_sentinel",
    "is_sentinel_url",
    "parse_sentinel_url",
]

#: Sentinel scheme -> True for TLS.
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
_QUERY = ("sentinel_username", "sentinel_password")
#: Commands a Sentinel client runs on the primary and every replica: users are per server.
_ON_EVERY_NODE = {("ACL", "SETUSER"), ("ACL", "DELUSER"), ("ACL", "SAVE")}


class NoSentinelPrimary(MasterNotFoundError):
    """The sentinels named in a URL gave no primary to connect to (none answered, none
    knows the service, the primary is down and not yet replaced, or production's
    plaintext rule forbids its address). A ``redis.ConnectionError``: callers retry it
    as an outage."""


@dataclass(frozen=True)
class SentinelURL:
    """A ``redis+sentinel://`` URL, parsed."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None
    sentinel_username: str | None
    sentinel_password: str | None
    tls: bool

    @property
    def where(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.sentinels)


def is_sentinel_url(url: str) -> bool:
    """True for a ``redis+sentinel://`` or ``rediss+sentinel://`` URL."""
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def host_ports(hostlist: str, what: str, hint: str = "") -> list[tuple[str, int]]:
    """The ``host:port`` pairs of a URL's comma-separated host list (an IPv6 host in
    brackets); BadRedisURL naming ``what`` for one without a port.

    >>> host_ports("127.0.0.1:7000,[::1]:7001", "node")
    [('127.0.0.1', 7000), ('::1', 7001)]
    """
    out = []
    for node in filter(None, hostlist.split(",")):
        host, sep, port = node.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise BadRedisURL(f"{what} {node!r} needs host:port{hint}")
        out.append((host.strip("[]"), int(port)))
    return out


def parse_sentinel_url(url: str) -> SentinelURL:
    """``url`` parsed: BadRedisURL (a ValueError) for no sentinel, a sentinel without a
    port, no service name, a database that is not a number, or an unknown query option.

    >>> parse_sentinel_url("redis+sentinel://127.0.0.1:26379")
    Traceback (most recent call last):
    ...
    shared.errors.BadRedisURL: a Sentinel URL names the service its sentinels watch: redis+sentinel://host:port/<service>[/db]
    """
    parts = urlsplit(url)
    tls = SENTINEL_SCHEMES.get(parts.scheme.lower())
    if tls is None:
        raise BadRedisURL(
            f"not a Sentinel URL: use {' or '.join(s + '://' for s in SENTINEL_SCHEMES)}"
        )
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    sentinels = host_ports(hostlist, "sentinel", " (a sentinel's port, often 26379)")
    if not sentinels:
        raise BadRedisURL(
            "a Sentinel URL names at least one sentinel: redis+sentinel://host:port/<service>"
        )
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise BadRedisURL(
            "a Sentinel URL names the service its sentinels watch: "
            "redis+sentinel://host:port/<service>[/db]"
        )
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise BadRedisURL(f"{parts.path!r}: a Sentinel URL's path is /<service>[/db]")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(_QUERY))
    if unknown:
        raise BadRedisURL(
            f"unknown option(s) {', '.join(unknown)}: a Sentinel URL takes {', '.join(_QUERY)}"
        )
    user, has_pw, password = userinfo.partition(":")
    return SentinelURL(
        sentinels=sentinels,
        service=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(user) or None,
        password=unquote(password) if has_pw else None,
        sentinel_username=query.get("sentinel_username", [None])[-1],
        sentinel_password=query.get("sentinel_password", [None])[-1],
        tls=tls,
    )


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Sentinels(Sentinel):
    """redis-py's ``Sentinel`` whose failure to name a primary is one clear error."""

    def __init__(self, url: SentinelURL, loopback_only: bool, **kwargs: Any) -> None:
        super().__init__(url.sentinels, **kwargs)
        self.url, self.loopback_only = url, loopback_only

    def discover_master(self, service_name: str) -> tuple[str, int]:
        try:
            host, port = super().discover_master(service_name)
        except MasterNotFoundError as e:
            raise NoSentinelPrimary(self._why(service_name)) from e
        if self.loopback_only and not _loopback(str(host)):
            raise NoSentinelPrimary(
                f"the sentinels at {self.url.where} name {host}:{port} as the primary of "
                f"{service_name!r}: production refuses plaintext to a remote host; use "
                "rediss+sentinel:// (TLS)"
            )
        return host, port

    def _why(self, service: str) -> str:
        """Why no sentinel gave a primary, asked again of each (this runs only when
        there is no primary to use)."""
        known: set[str] = set()
        errors = []
        for sentinel in self.sentinels:
            try:
                masters = sentinel.sentinel_masters()
            except redis.RedisError as e:
                errors.append(f"{e}")
                continue
            known.update(str(name) for name in masters)
            if service in masters:
                return (
                    f"the primary of {service!r} is down and not replaced yet (a failover "
                    f"is under way, or no replica can be promoted): sentinels {self.url.where}"
                )
        if known:
            return (
                f"the sentinels at {self.url.where} watch no service {service!r} "
                f"(they watch: {', '.join(sorted(known))}); fix the URL's /<service>"
            )
        if errors:
            return f"no sentinel at {self.url.where} answers: {errors[0]}"
        return f"the sentinels at {self.url.where} watch no service at all"


class SentinelClient(redis.Redis):
    """The primary's client (``Sentinel.master_for``) whose ACL changes reach every
    replica too (module docstring)."""

    # Set by connect_sentinel. Not ``sentinel``: that is redis-py's SENTINEL command.
    sentinels: _Sentinels
    service: str

    def execute_command(self, *args: Any, **options: Any) -> Any:
        # redis-py sends "ACL SETUSER" as one argument, callers as two; the second
        # argument of any other command may be a binary key: look only after ACL
        name = _text(args[0]).upper() if args else ""
        if name.startswith("ACL") and _acl_command(name, args) in _ON_EVERY_NODE:
            replies = self.on_every_node(lambda n: n.execute_command(*args, **options))
            return replies[0]
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def on_every_node(self, call: Callable[[Any], Any]) -> list[Any]:
        """``call`` on the primary (this client), then on a client of each replica the
        sentinels list, up or down (a replica that is down fails the call: a user must
        exist on a replica before it is promoted); the replies in that order."""
        replies = [call(_Primary(self))]
        for sentinel in self.sentinels.sentinels:
            try:
                replicas = sentinel.sentinel_slaves(self.service)
                break
            except redis.RedisError:
                continue
        else:
            raise NoSentinelPrimary(f"no sentinel at {self.sentinels.url.where} lists the replicas")
        kwargs = self.connection_pool.connection_kwargs
        options = {k: v for k, v in kwargs.items() if k not in ("connection_pool", "host", "port")}
        for replica in replicas:
            # from_pool: closing the client closes its pool (and socket) too
            node = redis.Redis.from_pool(
                redis.ConnectionPool(
                    connection_class=_plain_class(self.connection_pool.connection_class),
                    host=replica["ip"],
                    port=int(replica["port"]),
                    **options,
                )
            )
            try:
                replies.append(call(node))
            finally:
                node.close()
        return replies

    def close(self) -> None:
        super().close()
        self.sentinels.close()


class _Primary:
    """This client with its plain ``execute_command`` (no fan-out), for ``call``."""

    def __init__(self, client: SentinelClient) -> None:
        self._client = client

    def execute_command(self, *args: Any, **options: Any) -> Any:
        return redis.Redis.execute_command(self._client, *args, **options)  # type: ignore[no-untyped-call]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _plain_class(sentinel_class: type[Any]) -> type[Any]:
    """The connection class of one server that a Sentinel-managed class stands for."""
    return (
        redis.SSLConnection if issubclass(sentinel_class, redis.SSLConnection) else redis.Connection
    )


def _acl_command(name: str, args: tuple[Any, ...]) -> tuple[str, ...]:
    """("ACL", "SETUSER") for ``("ACL SETUSER", ...)`` and ``("ACL", "SETUSER", ...)``."""
    words = name.split()
    if len(words) == 1 and len(args) > 1:
        words.append(_text(args[1]).upper())
    return tuple(words[:2])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def connect_sentinel(url: str, *, loopback_only: bool = False, **options: Any) -> redis.Redis:
    """A client of the primary the sentinels of ``url`` name, re-asked on each new
    connection. ``options``: redis-py's keyword arguments, for the primary and (the
    ``ssl_*`` and ``socket_*`` ones) for the sentinels. ``loopback_only``: refuse a
    primary that is not on loopback (production with a plaintext URL). Nothing is sent
    until the first command."""
    u = parse_sentinel_url(url)
    ssl = {k: v for k, v in options.items() if k.startswith("ssl_")}
    if u.tls:
        ssl["ssl"] = True
    sentinel_options: dict[str, Any] = {
        **{k: v for k, v in options.items() if k.startswith("socket_")},
        **ssl,
        "username": u.sentinel_username,
        "password": u.sentinel_password,
    }
    options = {k: v for k, v in options.items() if not k.startswith("ssl_")} | ssl
    options.setdefault("username", u.username)
    options.setdefault("password", u.password)
    sentinels = _Sentinels(
        u, loopback_only and not u.tls, sentinel_kwargs=sentinel_options, **options
    )
    client: SentinelClient = sentinels.master_for(u.service, redis_class=SentinelClient, db=u.db)
    client.sentinels, client.service = sentinels, u.service
    return client
