"""One retry helper for every network call: exponential backoff with jitter,
hooks on each backoff and on giving up, and exceptions that end it at once
(authentication, bad input) because waiting will not fix them.

>>> calls = []
>>> def flaky():
...     calls.append(1)
...     if len(calls) < 3:
...         raise ConnectionError("down")
...     return "up"
>>> Backoff(base=0, cap=0).call(flaky, retry_on=(ConnectionError,))
'up'
>>> len(calls)
3
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Backoff:
    """Delays of ``base * 2**n`` seconds, capped, with full jitter."""

    base: float = 0.2
    cap: float = 10.0
    max_tries: int | None = None
    on_backoff: Callable[[int, float, BaseException], None] | None = None
    on_giveup: Callable[[int, BaseException], None] | None = None

    def delay(self, attempt: int) -> float:
        """A delay before try ``attempt + 1``; any attempt count is fine (a sender that
        retries for hours reaches counts whose ``2**n`` is no float).

        >>> Backoff(base=0.1, cap=2.0).delay(5000) <= 2.0
        True
        """
        return random.uniform(0, min(self.cap, self.base * 2.0 ** min(attempt, 64)))

    def call(
        self,
        fn: Callable[[], T],
        *,
        retry_on: tuple[type[BaseException], ...],
        give_up_on: tuple[type[BaseException], ...] = (),
        stop: threading.Event | None = None,
    ) -> T:
        """Call ``fn`` until it returns, retrying ``retry_on`` errors.

        ``give_up_on`` errors (checked first) and any other error propagate at
        once; so does the last error when ``max_tries`` or ``stop`` ends the loop.
        """
        attempt = 0
        while True:
            try:
                return fn()
            except give_up_on as e:
                if self.on_giveup:
                    self.on_giveup(attempt + 1, e)
                raise
            except retry_on as e:
                attempt += 1
                if (self.max_tries is not None and attempt >= self.max_tries) or (
                    stop is not None and stop.is_set()
                ):
                    if self.on_giveup:
                        self.on_giveup(attempt, e)
                    raise
                wait = self.delay(attempt - 1)
                if self.on_backoff:
                    self.on_backoff(attempt, wait, e)
                else:
                    logger.debug("retry %d in %.2fs after %r", attempt, wait, e)
                if stop is not None:
                    if stop.wait(wait):
                        raise
                else:
                    time.sleep(wait)
