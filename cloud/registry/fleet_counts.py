"""Fleet-wide figures kept up to date as statuses are written, never by scanning devices.

A device is counted in buckets (``cloud.registry.fleet_buckets``): the whole fleet (``devices``), its version
and health together (``vh:v3|serving``; ``vh:unknown|offline`` once its report expired),
each model it serves and that model's version (``model:digits``, ``mv:digits|v3``), and,
online, its counters summed (``e:predictions``, ``reason:absent``). The counts live in one
hash, ``FleetKeys.fleet_counts``; what each device is counted as lives beside them
(``FleetKeys.counted``) with the status stream id it was counted at.

Invariants:

- One Lua script (``_APPLY``, loaded once, run by EVALSHA) applies a device's report:
  it takes the device out of the buckets it was counted in and puts it in the new ones,
  only if the report is newer (by stream id) than what it is counted at. Applying a
  report twice, or an older one after a newer one, changes nothing: every writer may
  apply any report, in any order, and the counts end as one pass over the latest would.
- The API's HTTP status path runs the script in the MULTI/EXEC of the status write
  (``queue_report``): the report and its counting are one. Edges that write their status
  to Redis themselves cannot run scripts (their ACL user has ``-@scripting``); the
  controller, and each read, fold the status stream from ``counts_cursor`` (``fold``).
- A device's report expires with its device key: ``counted_live`` holds each online
  device by the time its key expires, and ``sweep`` checks only the devices past that
  time (ZRANGEBYSCORE from the oldest), counting those whose key is gone as offline.
- A stream trimmed past the cursor (reports never folded), or a fleet without counts,
  starts a repair walk (ZSCAN of the device index, ``batch`` devices per refresh);
  ``recount`` rebuilds it all at once from the device keys, for upgrades and repair
  (``edgeloop controller --recount``).

Every read (``read``) costs O(buckets + stale devices), whatever the fleet's size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from cloud.registry.fleet_buckets import Counted, Figures, buckets, figures_of, safe
from shared import replies
from shared.errors import MessageError
from shared.keys import FleetKeys
from shared.messages import EdgeStatus
from shared.status_report import STATUS_FIELD

logger = logging.getLogger(__name__)

_NEVER = 10 * 365 * 24 * 3600.0

_APPLY = """
-- ids are stream ids, "<ms>-<seq>", or "<ms>-<seq>-1": read from the device keys after
-- that entry was written (a snapshot), so after the report of that very entry
local function newer(a, b)
  local am, as, ao = string.match(a, '^(%d+)-(%d+)-?(%d*)$')
  local bm, bs, bo = string.match(b, '^(%d+)-(%d+)-?(%d*)$')
  am, as, ao = tonumber(am), tonumber(as), tonumber(ao) or 0
  bm, bs, bo = tonumber(bm), tonumber(bs), tonumber(bo) or 0
  if am ~= bm then return am > bm end
  if as ~= bs then return as > bs end
  return ao > bo
end
local function neg(s)
  if string.sub(s, 1, 1) == '-' then return string.sub(s, 2) end
  return '-' .. s
end
local counts, counted, live, stale, ids, stream, cursor = unpack(KEYS)
local seq_now = nil
local applied = 0
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local device, seq, deadline, new = ARGV[3 + 4 * i], ARGV[4 + 4 * i], ARGV[5 + 4 * i], ARGV[6 + 4 * i]
  if seq == '' then
    -- the newest entry of the status stream: the report this transaction just added
    if seq_now == nil then
      local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
      seq_now = last[1] and last[1][1] or '0-0'
    end
    seq = seq_now
  end
  local raw = redis.call('HGET', counted, device)
  local go = true
  if raw then
    local old = cjson.decode(raw)
    if newer(seq, old.s) then
      for f, a in pairs(old.f) do
        if redis.call('HINCRBY', counts, f, neg(a)) == 0 then redis.call('HDEL', counts, f) end
      end
    else
      go = false
    end
  else
    redis.call('ZADD', ids, 0, device)
  end
  if go then
    local rec = cjson.decode(new)
    for f, a in pairs(rec.f) do redis.call('HINCRBY', counts, f, a) end
    rec.s = seq
    redis.call('HSET', counted, device, cjson.encode(rec))
    if deadline == '' then
      redis.call('ZREM', live, device)
    else
      redis.call('ZADD', live, deadline, device)
    end
    if rec.x == 1 then redis.call('SADD', stale, device) else redis.call('SREM', stale, device) end
    applied = applied + 1
  end
end
local to = ARGV[2]
if to ~= '' then
  local cur = redis.call('GET', cursor)
  if not cur or newer(to, cur) then redis.call('SET', cursor, to) end
end
return applied
"""


@dataclass
class _Snapshot:
    """Device keys' TTLs (ms; -2: gone) and values, and the stamp of that read."""

    seq: str
    ttl: dict[str, int]
    raw: dict[str, bytes | None]


class FleetCounts:
    """One fleet's counts: kept (``queue_report``, ``refresh``), rebuilt (``recount``), read."""

    def __init__(
        self,
        client: redis.Redis,
        keys: FleetKeys,
        *,
        clock: Callable[[], float] = time.time,
        batch: int = 1000,
        read_batch: int = 100,
    ) -> None:
        self.client, self.keys, self.clock = client, keys, clock
        #: Reports folded, devices swept or repaired per call (a read's bound).
        self.batch = batch
        #: Reports a read folds while a controller keeps the counts fresh.
        self.read_batch = read_batch
        self._apply = client.register_script(_APPLY)

    def _keys(self) -> list[str]:
        k = self.keys
        return [
            k.fleet_counts, k.counted, k.counted_live, k.counted_stale, k.counted_ids,
            k.status, k.counts_cursor,
        ]  # fmt: skip

    def _args(self, items: Sequence[tuple[str, str, Counted]], cursor: str = "") -> list[Any]:
        args: list[Any] = [len(items), cursor]
        for device, seq, c in items:
            deadline = "" if c.deadline is None else repr(c.deadline)
            args += [device, seq, deadline, c.record()]
        return args

    def apply(self, items: Sequence[tuple[str, str, Counted]], cursor: str = "") -> int:
        """Count each (device, stream id, buckets) unless it is counted at a newer id;
        then move the fold's cursor to ``cursor`` if it is newer. Returns those applied."""
        return int(self._apply(keys=self._keys(), args=self._args(items, cursor)))

    # -- the writers --------------------------------------------------------------

    def queue_report(self, pipe: Any, status: EdgeStatus, ttl_s: int) -> None:
        """Queue the counting of ``status`` on ``pipe`` (a MULTI pipeline), after the
        report's own writes (``shared.status_report.add_report``): it is counted at the
        status stream entry the same transaction added."""
        deadline = self.clock() + ttl_s
        args = self._args([(status.device_id, "", buckets(status, deadline))])
        self._apply(keys=self._keys(), args=args, client=pipe)

    def refresh(self) -> None:
        """Bring the counts up to date, within ``batch`` of each kind of work: fold the
        newest reports, take a step of a repair walk if one runs, sweep expired devices."""
        if self.client.get(self.keys.counts_cursor) is None:
            self._start_walk()
        self.fold()
        self.repair_step()
        self.sweep()

    def read_refresh(self) -> None:
        """A read's ``refresh``. While a controller keeps the counts up to date (its last
        ``catch_up`` is fresh: ``counts_folded`` lives) a read folds at most ``read_batch``
        reports, the few written since that step, and leaves the sweep and any repair to
        the controller: its cost stays that of the counts' read whatever the report rate.
        Without a controller, the whole ``refresh``."""
        if self.client.exists(self.keys.counts_folded):
            self.fold(self.read_batch)
        else:
            self.refresh()

    def catch_up(self, rounds: int = 100, fresh_s: float | None = None) -> None:
        """``refresh``, then fold and repair until nothing is left (or ``rounds`` batches
        of each): the controller's step, so that reads usually find nothing to do. With
        ``fresh_s``, and nothing left to fold, reads trust the counts for that long
        (``read_refresh``): the controller's next step is due by then."""
        self.refresh()
        left = True
        for _ in range(rounds):
            if self.fold() < self.batch:
                left = False
                break
        for _ in range(rounds):
            if not self.client.exists(self.keys.counts_repair):
                break
            self.repair_step()
        self.sweep()
        if fresh_s is not None and not left and not self.client.exists(self.keys.counts_repair):
            self.client.set(self.keys.counts_folded, "1", px=max(1, int(fresh_s * 1000)))

    def _start_walk(self) -> None:
        """A fleet without counts (new, or upgraded from a version without them): count
        every device from its key by a repair walk, ``batch`` devices per refresh, so no
        read pays for the whole fleet; the first process to get here starts it."""
        start = self._snapshot([], values=False).seq.removesuffix("-1")
        if not self.client.set(self.keys.counts_cursor, start, nx=True):
            return
        k = self.keys
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(k.fleet_counts, k.counted, k.counted_live, k.counted_stale, k.counted_ids)
        pipe.set(k.counts_repair, "0")
        pipe.execute()
        logger.info("fleet %s: no counts yet; counting every device", k.fleet)

    def fold(self, count: int | None = None) -> int:
        """Count the status stream's reports after the cursor (one batch, or ``count``):
        how many."""
        cursor = replies.text(self.client.get(self.keys.counts_cursor) or b"0-0")
        pipe = self.client.pipeline(transaction=False)
        pipe.xrange(self.keys.status, f"({cursor}", "+", count=count or self.batch)
        pipe.execute_command("XINFO", "STREAM", self.keys.status)  # type: ignore[no-untyped-call]
        try:
            entries, info = pipe.execute()
        except redis.ResponseError:  # no stream yet: no reports
            return 0
        # MAXLEN ~ keeps the newest maxlen entries: the cursor's own entry is gone only
        # after that many more reports, and some of them may be gone unfolded too
        first = replies.trimmed_to(replies.stream_info(info))
        gap = first is not None and replies.id_newer(first, cursor)
        if gap and self.client.set(self.keys.counts_repair, "0", nx=True):
            logger.warning(
                "fleet %s: the status stream was trimmed past the counts (at %s, the "
                "stream starts at %s); repairing them from the device keys",
                self.keys.fleet,
                cursor,
                first,
            )
        if not entries:
            return 0
        reports: list[tuple[str, EdgeStatus]] = []
        for entry_id, fields in entries:
            raw = fields.get(STATUS_FIELD.encode())
            try:
                status = EdgeStatus.from_wire(raw) if raw else None
            except MessageError:
                status = None
            if status is not None and safe(status.device_id):
                reports.append((replies.text(entry_id), status))
        last = replies.text(entries[-1][0])
        deadlines = self._deadlines({s.device_id for _, s in reports})
        items = [(s.device_id, i, buckets(s, deadlines[s.device_id])) for i, s in reports]
        self.apply(items, last)
        return len(entries)

    def _deadlines(self, devices: Iterable[str]) -> dict[str, float]:
        """When each device's key expires (now, if gone: the sweep counts it offline)."""
        devices = list(devices)
        pipe = self.client.pipeline(transaction=False)
        for d in devices:
            pipe.pttl(self.keys.device(d))
        now = self.clock()
        return {d: _deadline(now, ms) for d, ms in zip(devices, pipe.execute(), strict=True)}

    def sweep(self) -> int:
        """Count offline the devices whose key expired, oldest deadline first (one batch);
        a device whose key lives on (a report not folded yet) is checked again when it
        expires. Returns the devices counted offline."""
        now = self.clock()
        due = replies.members(
            self.client.zrangebyscore(self.keys.counted_live, "-inf", now, start=0, num=self.batch)
        )
        if not due:
            return 0
        snapshot = self._snapshot(due, values=False)
        gone = [d for d in due if snapshot.ttl[d] == -2]
        later = {d: _deadline(now, snapshot.ttl[d]) for d in due if snapshot.ttl[d] != -2}
        if later:
            self.client.zadd(self.keys.counted_live, later, xx=True)
        if gone:
            self.apply([(d, snapshot.seq, buckets(None)) for d in gone])
        return len(gone)

    def repair_step(self) -> int:
        """One step of a running repair walk: recount ``batch`` devices from their keys."""
        cursor = self.client.get(self.keys.counts_repair)
        if cursor is None:
            return 0
        nxt, pairs = self.client.zscan(self.keys.devices, int(cursor), count=self.batch)
        done = self.resync(replies.text(d) for d, _ in pairs)
        if int(nxt) == 0:
            self.client.delete(self.keys.counts_repair)
            logger.info("fleet %s: counts repaired", self.keys.fleet)
        else:
            self.client.set(self.keys.counts_repair, int(nxt))
        return done

    def resync(self, devices: Iterable[str]) -> int:
        """Count ``devices`` from their device keys, as of the status stream's newest id."""
        wanted = [d for d in dict.fromkeys(devices) if safe(d)]
        if not wanted:
            return 0
        snap = self._snapshot(wanted, values=True)
        now = self.clock()
        items = []
        for d in wanted:
            raw = snap.raw.get(d)
            try:
                status = EdgeStatus.from_wire(raw) if raw else None
            except MessageError:
                status = None
            deadline = _deadline(now, snap.ttl[d])
            items.append((d, snap.seq, buckets(status, deadline) if status else buckets(None)))
        return self.apply(items)

    def recount(self, progress: Callable[[int], None] | None = None) -> int:
        """Rebuild the counts from every device's key (a full scan, for upgrades and
        repair): reports written meanwhile are folded after it. Returns the devices."""
        start = self._snapshot([], values=False).seq.removesuffix("-1")
        k = self.keys
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(
            k.fleet_counts, k.counted, k.counted_live, k.counted_stale, k.counted_ids,
            k.counts_repair,
        )  # fmt: skip
        pipe.set(k.counts_cursor, start)
        pipe.execute()
        total, cursor = 0, 0
        while True:
            cursor, pairs = self.client.zscan(k.devices, cursor, count=500)
            total += self.resync(replies.text(d) for d, _ in pairs)
            if progress is not None:
                progress(total)
            if cursor == 0:
                return total

    def _snapshot(self, devices: list[str], *, values: bool) -> _Snapshot:
        """The devices' key TTLs (and values) and the status stream's newest id, read in
        one transaction: any report after it has a larger id."""
        pipe = self.client.pipeline(transaction=True)
        for d in devices:
            pipe.pttl(self.keys.device(d))
            if values:
                pipe.get(self.keys.device(d))
        pipe.xrevrange(self.keys.status, "+", "-", count=1)
        out = pipe.execute()
        last = out[-1]
        # after the newest entry: what the keys say now is newer than that entry's report
        seq = (replies.text(last[0][0]) if last else "0-0") + "-1"
        step = 2 if values else 1
        ttl = {d: int(out[i * step]) for i, d in enumerate(devices)}
        raw = {d: out[i * step + 1] for i, d in enumerate(devices)} if values else {}
        return _Snapshot(seq, ttl, raw)

    # -- the readers --------------------------------------------------------------

    def read(self) -> Figures:
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self.keys.fleet_counts)
        pipe.smembers(self.keys.counted_stale)
        raw, stale = pipe.execute()
        counts = {replies.text(k): int(v) for k, v in raw.items()}
        return figures_of(counts, replies.members(stale))

    def page(self, after: str, limit: int) -> tuple[list[str], str | None]:
        """Up to ``limit`` counted device ids after ``after`` ("" for the first), by id,
        and the cursor of the next page (None: this was the last)."""
        low = f"({after}" if after else "-"
        ids = replies.members(
            self.client.zrangebylex(self.keys.counted_ids, low, "+", start=0, num=limit + 1)
        )
        if len(ids) > limit:
            return ids[:limit], ids[limit - 1]
        return ids, None


def _deadline(now: float, pttl_ms: int) -> float:
    if pttl_ms == -2:
        return now
    if pttl_ms == -1:
        return now + _NEVER
    return now + pttl_ms / 1000.0
