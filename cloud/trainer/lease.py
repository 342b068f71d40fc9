"""A lease in Redis: one holder at a time, lost if not renewed.

Only the trainer holding ``FleetKeys.trainer_lock(model)`` runs rounds and
publishes; the others keep ingesting, and one of them takes over within a TTL
when the holder dies. Renewal and release check the holder atomically (Lua), so
a trainer that lost its lease never extends or deletes someone else's.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

import redis

logger = logging.getLogger(__name__)

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Lease:
    def __init__(self, client: redis.Redis, key: str, holder: str, ttl_ms: int) -> None:
        self.client = client
        self.key = key
        self.holder = holder
        self.ttl_ms = ttl_ms
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._valid_until = 0.0

    @property
    def held(self) -> bool:
        """True while our last successful acquire/renew has not expired (by our clock)."""
        return time.monotonic() < self._valid_until

    def refresh(self) -> bool:
        """Renew the lease if we hold it, else try to take it; True when we hold it."""
        start = time.monotonic()
        ok = bool(self._renew(keys=[self.key], args=[self.holder, self.ttl_ms]))
        if not ok:
            ok = bool(self.client.set(self.key, self.holder, nx=True, px=self.ttl_ms))
            if ok:
                logger.info("took the lease %s", self.key)
        elif not self.held:
            logger.info("holding the lease %s again", self.key)
        # Count from before the round trip, so our idea of the lease never outlives Redis's.
        self._valid_until = start + self.ttl_ms / 1000.0 if ok else 0.0
        return ok

    def release(self) -> None:
        if self._valid_until:
            self._release(keys=[self.key], args=[self.holder])
        self._valid_until = 0.0

    @contextlib.contextmanager
    def kept(self) -> Iterator[None]:
        """Renew the lease every third of its TTL while the body runs: for work that
        blocks the loop that renews it (a bootstrap, a round in the loop's own thread),
        so that a standby does not take over from a live holder that is busy."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.ttl_ms / 3000.0):
                with contextlib.suppress(redis.RedisError):  # the loop's own refresh says
                    self.refresh()

        thread = threading.Thread(target=renew, name="lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
