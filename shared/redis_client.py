"""The one way every process connects to Redis: one server, a Redis Cluster, or a
Sentinel-managed primary (``shared/redis_sentinel.py``).

A URL names one server as redis-py spells it (``redis://``, ``rediss://`` for TLS,
``unix://``), or a Redis Cluster with ``+cluster`` in its scheme and one or more
of its nodes, comma-separated, to learn the cluster's layout from::

    redis+cluster://[user:password@]host:port[,host:port...][/0][?option=value]
    rediss+cluster://...   (TLS to every node, with the same ssl_* options)
    redis+sentinel://[user:password@]host:port[,host:port...]/<service>[/db]
    rediss+sentinel://...  (TLS to the sentinels and the primary)

A cluster has only database 0. Every key of one fleet carries the hash tag
``{<fleet>}`` (``shared/keys.py``), so a fleet's keys share one slot: its MULTI/EXEC
blocks, Lua scripts and multi-key reads stay legal, and fleets spread over the
masters. Nothing reads or writes two fleets' keys in one command.

``connect_redis`` returns a ``redis.Redis`` for one server and a ``ClusterClient``
for a cluster: a ``redis.cluster.RedisCluster`` that keeps what callers written for
one server rely on. It learns the layout on its first command, not when it is
built (a daemon starts with its Redis down); ``pipeline()`` is a MULTI/EXEC
transaction unless asked otherwise, as on one server; ``ACL SETUSER``/``DELUSER``
reach every node, replicas included, so a user survives a failover; ``SCAN``
walks every master.

>>> parse_cluster_url("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001/0")
('redis://:pw@10.0.0.1:7000/0', [('10.0.0.1', 7000), ('10.0.0.2', 7001)])
>>> is_cluster_url("rediss+cluster://cache:7000"), is_cluster_url("redis://cache:6379/0")
(True, False)
>>> is_tls_url("rediss+cluster://cache:7000"), is_tls_url("redis+cluster://cache:7000")
(True, False)
>>> is_tls_url("rediss+sentinel://s:26379/lab"), hosts_of("redis+sentinel://a:1,b:2/lab")
(True, ['a', 'b'])
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis._parsers import Encoder
from redis.client import CaseInsensitiveDict
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.commands.core import Script
from redis.exceptions import RedisClusterException

from shared.errors import BadRedisURL
from shared.redis_sentinel import (
    SENTINEL_SCHEMES,
    NoSentinelPrimary,
    connect_sentinel,
    host_ports,
    is_sentinel_url,
    parse_sentinel_url,
)

__all__ = [
    "CLUSTER_SCHEMES",
    "SENTINEL_SCHEMES",
    "ClusterClient",
    "NoSentinelPrimary",
    "NotACluster",
    "connect_redis",
    "disconnect",
    "hosts_of",
    "is_cluster_client",
    "is_cluster_url",
    "is_sentinel_url",
    "is_tls_url",
    "node_pipeline",
    "parse_cluster_url",
    "wait_replicas",
]

#: Commands a cluster client runs on every node: a node's users are its own.
_ON_EVERY_NODE = {("ACL", "SETUSER"), ("ACL", "DELUSER"), ("ACL", "SAVE")}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _node(host: str, port: int) -> Any:
    return ClusterNode(host, port)  # type: ignore[no-untyped-call]


def _without_keys(parse: Callable[..., Any]) -> Callable[..., Any]:
    """``parse`` (a one-server reply parser) called without the ``keys`` option a cluster
    pipeline adds to each command (one server's client drops it before parsing)."""

    def call(reply: Any, **options: Any) -> Any:
        options.pop("keys", None)
        return parse(reply, **options)

    return call


class NotACluster(redis.ConnectionError):
    """A cluster URL names a server that is not part of a Redis Cluster."""


#: Cluster scheme -> the scheme of one of its nodes.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    """True for a ``redis+cluster://`` or ``rediss+cluster://`` URL."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def is_tls_url(url: str) -> bool:
    """True for a URL whose connections use TLS (``rediss://``, ``rediss+cluster://``,
    ``rediss+sentinel://``)."""
    return url.partition("://")[0].lower() in ("rediss", "rediss+cluster", "rediss+sentinel")


def parse_cluster_url(url: str) -> tuple[str, list[tuple[str, int]]]:
    """A cluster URL as (the URL of its first node, every node it names).

    BadRedisURL (a ValueError) for a URL with no node, a node without a port, or a
    database other than 0.

    >>> parse_cluster_url("redis+cluster://127.0.0.1:7000/1")
    Traceback (most recent call last):
    ...
    shared.errors.BadRedisURL: a Redis Cluster has only database 0; drop /1 from the URL
    """
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise BadRedisURL(
            f"not a cluster URL: use {' or '.join(s + '://' for s in CLUSTER_SCHEMES)}"
        )
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    nodes = host_ports(hostlist, "cluster node")
    if not nodes:
        raise BadRedisURL("a cluster URL names at least one node: redis+cluster://host:port")
    if parts.path.strip("/") not in ("", "0"):
        raise BadRedisURL(f"a Redis Cluster has only database 0; drop {parts.path} from the URL")
    first = hostlist.split(",")[0]
    netloc = f"{userinfo}@{first}" if userinfo else first
    return urlunsplit((scheme, netloc, parts.path, parts.query, "")), nodes


def hosts_of(url: str) -> list[str]:
    """Every host a URL connects to (all the nodes of a cluster URL, the sentinels of a
    Sentinel URL: the primary's address is known only when the sentinels name it).

    >>> hosts_of("redis+cluster://a:1,b:2"), hosts_of("redis://:pw@c:6379/0")
    (['a', 'b'], ['c'])
    """
    if is_cluster_url(url):
        return [host for host, _ in parse_cluster_url(url)[1]]
    if is_sentinel_url(url):
        return [host for host, _ in parse_sentinel_url(url).sentinels]
    host = urlsplit(url).hostname
    return [host] if host else []


def connect_redis(url: str, **options: Any) -> redis.Redis:
    """A client for ``url`` (one server, a cluster or a Sentinel-managed primary; see
    the module's docstring).

    ``options``: redis-py's keyword arguments (``ssl_*`` from
    ``shared.transport.tls_options``, timeouts, ``retry``), and ``loopback_only``
    (``RedisSettings.redis_options`` in production): a plaintext Sentinel URL refuses
    a primary that is not on loopback. Nothing is sent until the first command. A
    cluster client is typed as ``redis.Redis``: it answers the same commands for the
    keys of one fleet, which is all the callers send.
    """
    loopback_only = bool(options.pop("loopback_only", False))
    if is_sentinel_url(url):
        return connect_sentinel(url, loopback_only=loopback_only, **options)
    if is_cluster_url(url):
        return cast("redis.Redis", ClusterClient(url, **options))
    return redis.Redis.from_url(url, **options)


class ClusterClient:
    """A ``RedisCluster`` built on first use, with one server's defaults (module docstring)."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self._node_url, self._nodes = parse_cluster_url(url)
        self._options = options
        # RedisCluster and its helpers are untyped in redis-py: Any, not a false type.
        self._client: Any = None
        self._callbacks: Any = None
        self._lock = threading.Lock()

    @property
    def cluster(self) -> Any:
        """The ``RedisCluster``, built now if it is not yet: redis.ConnectionError when
        no node named in the URL answers."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._build()
        return self._client

    def _build(self) -> Any:
        options = dict(self._options)
        # Cluster-level retries: the given Retry, else redis-py's default (3, with backoff).
        retry = options.pop("retry", None)
        try:
            return RedisCluster(
                url=self._node_url,
                startup_nodes=[_node(h, p) for h, p in self._nodes[1:]],
                retry=retry,
                **options,
            )
        except RedisClusterException as e:
            # Callers treat an unreachable server as redis.ConnectionError; so is this.
            nodes = ",".join(f"{h}:{p}" for h, p in self._nodes)
            if "not enabled" in str(e):
                raise NotACluster(
                    f"{nodes} is not a Redis Cluster (cluster mode is not enabled there): "
                    "give one server as redis:// or rediss://, a cluster as redis+cluster://"
                ) from e
            raise redis.ConnectionError(f"cannot reach the Redis Cluster at {nodes}: {e}") from e

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cluster, name)

    def get_encoder(self) -> Any:
        """What ``register_script`` needs, without reaching the cluster."""
        o = self._options
        return Encoder(  # type: ignore[no-untyped-call]
            o.get("encoding", "utf-8"),
            o.get("encoding_errors", "strict"),
            o.get("decode_responses", False),
        )

    def register_script(self, script: str) -> ClusterScript:
        return ClusterScript(cast("redis.Redis", self), script)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        """MULTI/EXEC by default, as ``redis.Redis.pipeline``: every key of one
        transaction must share a slot (one fleet's keys do). A transaction's replies are
        parsed as one server's are (redis-py's cluster transaction parses only the
        cluster commands: SET would give b"OK", XRANGE flat lists)."""
        pipe = self.cluster.pipeline(transaction=transaction, shard_hint=shard_hint)
        if transaction:
            pipe.cluster_response_callbacks = self._transaction_callbacks()
        return pipe

    def _transaction_callbacks(self) -> Any:
        if self._callbacks is None:
            cluster = self.cluster
            node = cluster.get_default_node().redis_connection
            assert node is not None  # the cluster client built it with its layout
            parsers: dict[str, Any] = {
                name: _without_keys(cb) for name, cb in node.response_callbacks.items()
            }
            self._callbacks = CaseInsensitiveDict({**parsers, **cluster.cluster_response_callbacks})
        return self._callbacks

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """As ``RedisCluster.execute_command``, but ACL SETUSER, DELUSER and SAVE run on
        every node (``every_node``); the first node's reply is returned."""
        if len(args) >= 2 and "target_nodes" not in options:
            command = (_text(args[0]).upper(), _text(args[1]).upper())
            if command in _ON_EVERY_NODE:
                return self.on_every_node(lambda n: n.execute_command(*args, **options))[0]  # type: ignore[no-untyped-call]
        return self.cluster.execute_command(*args, **options)

    def acl_setuser(self, *args: Any, **kwargs: Any) -> bool:
        return all(self.on_every_node(lambda node: node.acl_setuser(*args, **kwargs)))

    def acl_deluser(self, *usernames: str) -> int:
        return max(int(n) for n in self.on_every_node(lambda node: node.acl_deluser(*usernames)))

    def on_every_node(self, call: Callable[[redis.Redis], Any]) -> list[Any]:
        """``call`` on a client of each node the cluster knows, masters and replicas,
        failed or not, and their replies (ACLs are per node and not replicated: a user
        must exist on a replica before it is promoted). The nodes come from CLUSTER NODES:
        CLUSTER SLOTS leaves out a replica until it has replicated a write."""
        parts = urlsplit(self._node_url)
        userinfo = parts.netloc.rpartition("@")[0]
        replies = []
        for address in self.cluster.cluster_nodes():
            netloc = f"{userinfo}@{address}" if userinfo else address
            node = redis.Redis.from_url(urlunsplit(parts._replace(netloc=netloc)), **self._options)
            try:
                replies.append(call(node))
            finally:
                node.close()
        return replies

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class ClusterScript(Script):
    """A script that, queued on a cluster pipeline, is sent whole (EVAL): a cluster
    pipeline cannot load it first, and SCRIPT LOAD is not replicated, so a promoted
    replica would refuse an EVALSHA. Called on its own it is EVALSHA, loaded on a
    NOSCRIPT reply."""

    def __call__(
        self,
        keys: Any = None,
        args: Any = None,
        client: Any = None,
    ) -> Any:
        if isinstance(client, ClusterPipeline):
            keys, args = list(keys or []), list(args or [])
            return client.execute_command("EVAL", self.script, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
        return super().__call__(keys, args, client)


def is_cluster_client(client: object) -> bool:
    """True for a client ``connect_redis`` made for a cluster URL."""
    return isinstance(client, ClusterClient)


def wait_replicas(client: redis.Redis, key: str, replicas: int, timeout_ms: int) -> int:
    """WAIT on the node of ``key`` (a cluster's master of its slot): how many replicas
    hold this client's writes there, within ``timeout_ms``. WAIT counts the writes of its
    own connection: call it from the thread that wrote, right after, on a client no
    other thread uses (its pool then hands back the connection the write used)."""
    options: dict[str, Any] = {}
    if isinstance(client, ClusterClient):
        options["target_nodes"] = client.cluster.get_node_from_key(key)
    reply = client.execute_command("WAIT", replicas, timeout_ms, **options)  # type: ignore[no-untyped-call]
    return int(reply)


def node_pipeline(client: redis.Redis, key: str) -> Any:
    """A pipeline without MULTI on one connection to the node that serves ``key`` now
    (a cluster's master of its slot): its commands run in order on that connection, so
    a WAIT in it counts the writes queued before it. On a cluster a keyed command is
    not redirected: if the slot moved, it fails (MOVED) rather than run elsewhere."""
    if isinstance(client, ClusterClient):
        cluster = client.cluster
        node = cluster.get_redis_connection(cluster.get_node_from_key(key))
        return node.pipeline(transaction=False)
    return client.pipeline(transaction=False)


def disconnect(client: redis.Redis) -> None:
    """Close every socket ``client`` holds now (a blocked read on one ends at once)."""
    if isinstance(client, ClusterClient):
        if client._client is not None:
            for node in client._client.get_nodes():
                if node.redis_connection is not None:
                    node.redis_connection.connection_pool.disconnect()
        return
    client.connection_pool.disconnect()
