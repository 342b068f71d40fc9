"""Redis replies as the types the code works with.

Every edgeloop Redis client is made without ``decode_responses``: samples,
artifacts, patches and signed manifests are binary. A string reply therefore
arrives as bytes; names, ids and sha256s are read as text with ``text``, and
payloads with ``binary``, which refuses a client that decodes (it would have
mangled them).

>>> text(b"el:{lab}:feedback"), text("1700000000000-0"), optional_text(None)
('el:{lab}:feedback', '1700000000000-0', None)
>>> binary(b"\\x00\\xff")
b'\\x00\\xff'
>>> members([b"pi-1", "pi-2"])
['pi-1', 'pi-2']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from shared.errors import ConfigError

# Cluster errors of newer redis-py releases than the oldest this project accepts (redis>=5);
# where one is missing, the fallback (ConnectionError, listed already) keeps the tuple valid.
_UNREACHABLE = getattr(redis.exceptions, "RedisClusterUnreachableError", redis.ConnectionError)
_UNCOVERED = getattr(redis.exceptions, "SlotNotCoveredError", redis.ConnectionError)

#: What a Redis that does not answer (down, hung, restarting) raises in redis-py; and a
#: Redis Cluster during a failover: its slot not served yet (CLUSTERDOWN, TRYAGAIN, a slot
#: no node covers), or, when a layout refresh reached no node, RedisClusterUnreachableError
#: (a RedisClusterException, no RedisError).
REDIS_DOWN = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    _UNREACHABLE,
    _UNCOVERED,
)


class DecodingClient(ConfigError):
    """A Redis client with ``decode_responses`` was given where binary replies are needed."""


def text(reply: object) -> str:
    """A string reply (or a number) as text."""
    if isinstance(reply, bytes):
        return reply.decode()
    return reply if isinstance(reply, str) else str(reply)


def optional_text(reply: object) -> str | None:
    """``text``, with None (a missing key) kept as None."""
    return None if reply is None else text(reply)


def binary(reply: object) -> bytes:
    """A payload reply as the bytes stored."""
    if not isinstance(reply, bytes):
        raise DecodingClient(
            f"expected bytes from Redis, got {type(reply).__name__}: edgeloop needs Redis "
            "clients made without decode_responses"
        )
    return reply


def members(reply: Iterable[object]) -> list[str]:
    """A set's (or a sorted set's, read without scores) members as text."""
    out = []
    for member in reply:
        if not isinstance(member, (bytes, str)):
            raise TypeError(f"expected members without scores, got {member!r}")
        out.append(text(member))
    return out


def stream_info(reply: Any) -> dict[str, str]:
    """XINFO STREAM's reply (flat list or dict) as text fields: its scalar values only."""
    if isinstance(reply, dict):
        items = list(reply.items())
    else:
        items = list(zip(reply[::2], reply[1::2], strict=True))
    return {text(k): text(v) for k, v in items if isinstance(v, (bytes, str, int))}


def trimmed_to(info: dict[str, str]) -> str | None:
    """The first entry id of a stream that lost entries to trimming (``stream_info``),
    else None."""
    if int(info.get("entries-added", 0)) <= int(info.get("length", 0)):
        return None
    return info.get("recorded-first-entry-id") or None


def id_newer(a: str, b: str) -> bool:
    """Stream id ``a`` after ``b``.

    >>> id_newer("1700000000001-0", "1700000000000-9"), id_newer("5-1", "5-1")
    (True, False)
    """
    am, _, asq = a.partition("-")
    bm, _, bsq = b.partition("-")
    return (int(am), int(asq or 0)) > (int(bm), int(bsq or 0))
