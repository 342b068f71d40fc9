"""Quarantine: a device whose labels disagree with the fleet far beyond chance is set aside.

The trainer checks every accepted sample's truth against its current model
(cloud/trainer/label_check.py) and counts, per device, the samples checked
(``n``) and those the model disagrees with (``k``) in ``FleetKeys.agreement``.
A device is quarantined when, with at least ``min_samples`` checked, its rate
``r = k / n`` exceeds the bound ``q = p + margin`` (``p``: the median rate of
the other devices with ``min_samples``, quarantined ones left out) by more
than chance allows. Chance is bounded by Chernoff: if the device's true rate
were at most ``q``, then ``P(k/n >= r) <= exp(-n * KL(r || q))`` (KL of two
Bernoulli laws); quarantine needs that bound below ``delta``. The margin keeps
honest devices that are merely noisier than the fleet (a worse sensor, a sloppy
labeler) out; the bound keeps a device with few samples out. A device alone
(no other device with ``min_samples``) is never judged.

A quarantined device's samples go to ``FleetKeys.quarantined`` (kept, never
trained on, weight 0 in the gate); its waiting samples move there too. A
release (``edgeloop quarantine release``) moves them all back to the device's
pending list, to be admitted like new feedback, and starts its counts afresh.

>>> v = suspects({"a": (200, 10), "b": (200, 14), "flip": (200, 180)}, margin=0.25)
>>> list(v), round(v["flip"].fleet_rate, 3)
(['flip'], 0.06)
>>> suspects({"a": (200, 10), "noisy": (200, 50)}, margin=0.25)
{}
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass
from typing import Any

import redis

from shared import replies
from shared.errors import MessageError, NotFound
from shared.keys import FleetKeys
from shared.messages import QuarantineRecord

logger = logging.getLogger(__name__)


class NotQuarantined(NotFound):
    """The device is not quarantined for that model."""


def bernoulli_kl(p: float, q: float) -> float:
    """KL(Bern(p) || Bern(q)), in nats."""
    eps = 1e-12
    p, q = min(max(p, 0.0), 1.0), min(max(q, eps), 1.0 - eps)
    out = 0.0
    if p > 0:
        out += p * math.log(p / q)
    if p < 1:
        out += (1 - p) * math.log((1 - p) / (1 - q))
    return out


@dataclass(frozen=True)
class Verdict:
    """The numbers behind a quarantine."""

    checked: int
    disagreed: int
    fleet_rate: float
    bound: float
    p_value: float

    @property
    def rate(self) -> float:
        return self.disagreed / self.checked

    def reason(self) -> str:
        return (
            f"labels disagree with the model on {self.rate:.0%} of {self.checked} samples; "
            f"the fleet's median {self.fleet_rate:.0%}, bound {self.bound:.0%} "
            f"(Chernoff p <= {self.p_value:.1e})"
        )


def suspects(
    checks: dict[str, tuple[int, int]],
    *,
    margin: float,
    delta: float = 1e-6,
    min_samples: int = 100,
    skip: frozenset[str] = frozenset(),
) -> dict[str, Verdict]:
    """The devices to quarantine, from (checked, disagreed) per device."""
    rates = {
        d: k / n for d, (n, k) in checks.items() if n >= min_samples and d not in skip and n > 0
    }
    out: dict[str, Verdict] = {}
    for device, rate in rates.items():
        others = [r for d, r in rates.items() if d != device]
        if not others:
            continue
        fleet = statistics.median(others)
        bound = fleet + margin
        if bound >= 1.0 or rate <= bound:
            continue
        n, k = checks[device]
        p_value = math.exp(-n * bernoulli_kl(rate, bound))
        if p_value < delta:
            out[device] = Verdict(n, k, fleet, bound, p_value)
    return out


class Quarantine:
    """One model's quarantined devices, their kept samples and the label-check counts."""

    def __init__(self, client: redis.Redis, keys: FleetKeys, model: str) -> None:
        self.client = client
        self.keys = keys
        self.model = model
        self.key = keys.quarantine(model)
        self.counts_key = keys.agreement(model)

    def members(self) -> dict[str, QuarantineRecord]:
        """The quarantined devices and why (unreadable records are skipped)."""
        out = {}
        for device, raw in self.client.hgetall(self.key).items():
            try:
                out[replies.text(device)] = QuarantineRecord.from_wire(raw)
            except MessageError as e:
                logger.warning("unreadable quarantine record of %r: %s", device, e)
        return out

    def kept(self, device: str) -> int:
        return int(self.client.llen(self.keys.quarantined(self.model, device)))

    def count(self, checks: dict[str, tuple[int, int]]) -> None:
        """Add (checked, disagreed) per device to the counts."""
        pipe = self.client.pipeline(transaction=False)
        for device, (n, k) in checks.items():
            pipe.hincrby(self.counts_key, f"n:{device}", n)
            if k:
                pipe.hincrby(self.counts_key, f"k:{device}", k)
        pipe.execute()

    def checks(self) -> dict[str, tuple[int, int]]:
        """(checked, disagreed) per device."""
        raw = {replies.text(f): int(v) for f, v in self.client.hgetall(self.counts_key).items()}
        return {f[2:]: (n, raw.get(f"k:{f[2:]}", 0)) for f, n in raw.items() if f.startswith("n:")}

    def judge(self, margin: float, delta: float, min_samples: int) -> list[QuarantineRecord]:
        """Quarantine the devices the counts condemn; returns the new records."""
        skip = frozenset(self.members())
        found = suspects(
            self.checks(), margin=margin, delta=delta, min_samples=min_samples, skip=skip
        )
        records = []
        for device, v in sorted(found.items()):
            record = QuarantineRecord(
                device_id=device,
                model=self.model,
                reason=v.reason(),
                checked=v.checked,
                disagreed=v.disagreed,
                rate=round(v.rate, 4),
                fleet_rate=round(v.fleet_rate, 4),
                bound=round(v.bound, 4),
                p_value=v.p_value,
            )
            self.put(record)
            records.append(record)
        return records

    def put(self, record: QuarantineRecord) -> None:
        """Quarantine a device: record why, and set its waiting samples aside with it."""
        device = record.device_id
        pending = self.keys.pending(self.model, device)
        aside = self.keys.quarantined(self.model, device)

        def txn(pipe: Any) -> None:
            waiting = pipe.lrange(pending, 0, -1)
            pipe.multi()
            pipe.hset(self.key, device, record.to_wire())
            if waiting:
                pipe.rpush(aside, *waiting)
            pipe.delete(pending)
            pipe.srem(self.keys.pending_devices(self.model), device)

        self.client.transaction(txn, pending)
        logger.warning("quarantined %s for %s: %s", device, self.model, record.reason)

    def release(self, device: str) -> int:
        """End a quarantine: its kept samples wait for admission again (returned: how
        many), its counts start afresh. NotQuarantined if it was not."""
        pending = self.keys.pending(self.model, device)
        aside = self.keys.quarantined(self.model, device)
        moved = 0

        def txn(pipe: Any) -> None:
            nonlocal moved
            if not pipe.hexists(self.key, device):
                raise NotQuarantined(f"device {device!r} is not quarantined for {self.model}")
            kept = pipe.lrange(aside, 0, -1)
            moved = len(kept)
            pipe.multi()
            if kept:
                pipe.rpush(pending, *kept)
                pipe.sadd(self.keys.pending_devices(self.model), device)
            pipe.delete(aside)
            pipe.hdel(self.key, device)
            pipe.hdel(self.counts_key, f"n:{device}", f"k:{device}")

        self.client.transaction(txn, self.key, aside)
        logger.info("released %s for %s: %d kept samples re-queued", device, self.model, moved)
        return moved
