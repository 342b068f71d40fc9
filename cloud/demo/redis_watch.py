"""The demo's one door to its Redis: every read the orchestrator and the live view
make goes through a ``RedisWatch``, which rides out a hung or restarted
redis-server instead of ending the run.

- ``read(fn, default)``: one try; while Redis does not answer, ``default`` (the
  live view shows the last thing it knew) and the outage is noted;
- ``must(fn, what)``: a read the result needs, retried for up to ``patience_s``;
  then ``RedisUnreachable``, one line (the CLI's exit 2), never a traceback;
- ``state``: ``"Redis unreachable for 7 s (TimeoutError)"`` while it lasts, else None;
- ``check(what)``: ``RedisUnreachable`` once an outage has lasted ``patience_s``
  (a loop that waits for Redis does not wait forever).

Its client has a short socket timeout and no retries of its own: a paused
redis-server accepts connections and never answers, and redis-py's default (5 s,
retried three times with backoff) would freeze the live view for half a minute a
read.

>>> import redis
>>> watch = RedisWatch.connect("redis://127.0.0.1:1/0")  # nothing listens on port 1
>>> watch.read(lambda r: r.get("k"), default="as before")
'as before'
>>> watch.state.startswith("Redis unreachable for 0 s")
True
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.errors import EdgeloopError
from shared.redis_client import connect_redis
from shared.replies import REDIS_DOWN

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long one read may wait for an answer: a loopback Redis answers in well under
#: a millisecond, so a second means it is not answering.
READ_TIMEOUT_S = 1.5
#: How long a read the result needs waits for Redis to answer again.
PATIENCE_S = 120.0


class RedisUnreachable(EdgeloopError):
    """The demo's Redis did not answer a read the result needs in time."""


class RedisWatch:
    """Reads through ``client``, with the outage they met (if any) kept for the view."""

    def __init__(
        self,
        client: redis.Redis,
        patience_s: float = PATIENCE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.patience_s = patience_s
        self.clock = clock
        self.down_since: float | None = None
        self.last_error = ""

    @classmethod
    def connect(cls, url: str, patience_s: float = PATIENCE_S) -> RedisWatch:
        """A watch with its own client on ``url``: short timeouts, no hidden retries."""
        client = connect_redis(
            url,
            socket_timeout=READ_TIMEOUT_S,
            socket_connect_timeout=READ_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, patience_s)

    @property
    def down_for(self) -> float | None:
        """Seconds since Redis last failed to answer, None while it answers."""
        return None if self.down_since is None else self.clock() - self.down_since

    @property
    def state(self) -> str | None:
        """The outage in one line for the live view, or None."""
        down = self.down_for
        if down is None:
            return None
        return f"Redis unreachable for {down:.0f} s ({self.last_error})"

    def read(self, fn: Callable[[redis.Redis], T], default: T) -> T:
        """``fn(client)``, or ``default`` when Redis does not answer."""
        try:
            value = fn(self.client)
        except REDIS_DOWN as e:
            self._failed(e)
            return default
        self._answered()
        return value

    def must(self, fn: Callable[[redis.Redis], T], what: str) -> T:
        """``fn(client)``, retried while Redis does not answer for up to ``patience_s``."""
        deadline = self.clock() + self.patience_s
        while True:
            try:
                value = fn(self.client)
            except REDIS_DOWN as e:
                self._failed(e)
                if self.clock() >= deadline:
                    raise RedisUnreachable(
                        f"Redis did not answer for {self.patience_s:.0f} s while reading "
                        f"{what} ({self.last_error})"
                    ) from e
                time.sleep(0.5)
                continue
            self._answered()
            return value

    def check(self, what: str) -> None:
        """Raise ``RedisUnreachable`` when Redis has not answered for ``patience_s``."""
        down = self.down_for
        if down is not None and down > self.patience_s:
            raise RedisUnreachable(
                f"Redis did not answer for {down:.0f} s while {what} ({self.last_error})"
            )

    def close(self) -> None:
        self.client.close()

    def _failed(self, e: BaseException) -> None:
        self.last_error = type(e).__name__
        if self.down_since is None:
            self.down_since = self.clock()
            logger.warning("redis does not answer (%s); the demo waits for it", e)

    def _answered(self) -> None:
        if self.down_since is not None:
            logger.warning("redis answers again after %.0f s", self.clock() - self.down_since)
            self.down_since = None
