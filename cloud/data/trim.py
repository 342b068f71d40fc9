"""Trimming a feedback stream once every consumer group has accepted its entries.

A feedback stream (``FleetKeys.feedback_of(model)``, or the fleet-wide
``FleetKeys.feedback`` with a group per model) would otherwise keep every event
an edge ever sent: at 3 000 devices sending 5 events a minute that is about
10 MB a minute. An entry may go once no group can want it again:

- a group wants every entry after its ``last-delivered-id`` (not read yet), and
  every entry in its pending list (read, not acknowledged: a dead consumer's
  entries are taken over with XAUTOCLAIM, so they must stay);
- an entry at or before ``last-delivered-id`` and not pending was acknowledged,
  which for the trainers means accepted (acceptance XACKs in the same
  transaction that writes the samples and marks their ids seen).

So the bound of a group is its oldest pending id, else its last-delivered id,
and the stream is trimmed (``XTRIM MINID``: entries with a smaller id go) to the
smallest bound over its groups; the last delivered entry itself stays, which
keeps the code free of "the id after" arithmetic. A stream without groups is
never trimmed (nobody has read anything). The whole decision and the trim are
one Lua script, so no group can move between the reading and the trimming,
and nothing written meanwhile is at risk: edges XADD with server ids, always
above every group's last-delivered id.

Several trainers may trim the same stream (one per model on the fleet-wide
stream, or several of one model): each trim is atomic and idempotent.

A group that stopped for good (the one-model trainers' ``trainers`` group on the
fleet-wide stream after an upgrade, or a model's group whose trainers are gone)
holds the stream at its position: delete it (``XGROUP DESTROY``) once its
trainers are retired.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

logger = logging.getLogger(__name__)

#: Trim ``KEYS[1]`` to the oldest entry any of its consumer groups still needs.
#: Returns {entries removed, the MINID used} (0 and "" when nothing could go).
_TRIM = """
local function lt(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  return tonumber(as) < tonumber(bs)
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return {0, ''} end
local bound = nil
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local b = info['last-delivered-id']
  if tonumber(info['pending']) > 0 then
    b = redis.call('XPENDING', KEYS[1], info['name'])[2]
  end
  if bound == nil or lt(b, bound) then bound = b end
end
if bound == '0-0' then return {0, ''} end
return {redis.call('XTRIM', KEYS[1], 'MINID', bound), bound}
"""


class StreamTrimmer:
    """Trims streams to what their consumer groups still need, at most every
    ``interval_s`` per stream (the script reads each group's pending summary)."""

    def __init__(self, client: redis.Redis, interval_s: float = 5.0) -> None:
        self.client = client
        self.interval_s = interval_s
        self._script: Any = client.register_script(_TRIM)
        self._next: dict[str, float] = {}
        self.trimmed = 0  # entries removed by this process

    def trim(self, stream: str) -> int:
        """Trim ``stream`` now; the number of entries removed."""
        removed, bound = self._script(keys=[stream])
        removed = int(removed)
        if removed:
            self.trimmed += removed
            logger.debug("trimmed %d accepted entries of %s (below %s)", removed, stream, bound)
        return removed

    def maybe_trim(self, stream: str) -> int:
        """``trim`` when ``interval_s`` has passed since this stream's last trim, else 0."""
        if self.interval_s < 0:
            return 0  # trimming off
        now = time.monotonic()
        if now < self._next.get(stream, 0.0):
            return 0
        self._next[stream] = now + self.interval_s
        return self.trim(stream)
