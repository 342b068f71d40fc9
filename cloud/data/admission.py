"""The per-device share cap: no device's data dominates a round or the gate.

A staged trainer (``DataOptions.stage``) keeps each device's accepted training
samples in a list of its own (``FleetKeys.pending``). When a round starts,
``admit`` moves into the replay buffer and the recent-training ring at most a
quota per device, chosen by water-filling so that no device holds more than
``max_share`` of the samples the round admits:

    quota = min(n_d, tau), tau the largest with tau <= max_share * sum_d min(n_d, tau)

A device's excess stays in its list, oldest first, for a later round in which
others have contributed. Since fewer than ``1 / max_share`` devices can never
satisfy the cap, a device may always add ``floor`` samples (the trainer's
``device_share_floor``, by default ``round_min_samples``): a lone device still
trains, and its share
of the round's whole training set (the replay buffer rehearses earlier data
too) stays small. The move is one
WATCH/MULTI/EXEC: a sample is admitted once or waits; it is never lost, never
admitted twice.

The gate's held-out data is capped the same way by weight (``device_weights``):
every device's samples together weigh at most ``max_share`` of the whole, the
seed split (no device) weighs one per sample, quarantined devices nothing.

>>> share_quota({"a": 1000, "b": 100, "c": 100}, 0.5)
{'a': 200, 'b': 100, 'c': 100}
>>> share_quota({"a": 1000}, 0.5, floor=100)
{'a': 100}
>>> device_weights(["a", "a", "a", "b", None], 0.5).round(3).tolist()
[0.667, 0.667, 0.667, 1.0, 1.0]
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.data.replay import TrainerData
from shared import replies

logger = logging.getLogger(__name__)


def share_quota(counts: dict[str, int], max_share: float, floor: int = 0) -> dict[str, int]:
    """Samples each device may add to a round so that none exceeds ``max_share`` of what
    the round adds, or ``floor`` samples when that is more."""
    if not counts:
        return {}
    if max_share >= 1.0:
        return dict(counts)
    top = max(counts.values())

    def fits(tau: int) -> bool:
        return tau <= max_share * sum(min(n, tau) for n in counts.values()) + 1e-9

    # s * sum(min(n, tau)) - tau is concave and 0 at 0: the taus that fit are 0..tau*.
    lo, hi = 0, top
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    tau = min(top, max(lo, floor))
    return {d: min(n, tau) for d, n in counts.items()}


def device_weights(
    devices: Sequence[str | None], max_share: float, exclude: Collection[str] = ()
) -> npt.NDArray[np.float64]:
    """Per-sample weights under which no device weighs more than ``max_share`` of the
    total: devices over the cap are scaled down (water-filling), the seed split's samples
    (None) weigh 1, ``exclude``'s (quarantined) 0. With fewer devices than the cap can
    serve and no seed data, each device weighs the same."""
    w = np.ones(len(devices), np.float64)
    if not len(devices):
        return w
    counts = Counter(d for d in devices if d is not None and d not in exclude)
    seed = sum(1 for d in devices if d is None)
    totals: dict[str, float] = dict(counts)
    if counts and max_share < 1.0:
        top = max(counts.values())

        def fits(tau: float) -> bool:
            return tau <= max_share * (seed + sum(min(n, tau) for n in counts.values())) + 1e-9

        if fits(top):
            tau = float(top)
        else:  # bisection on the concave excess, as in share_quota, over the reals
            lo, hi = 0.0, float(top)
            for _ in range(60):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if fits(mid) else (lo, mid)
            tau = lo
        if tau <= 1e-6 * top:  # nothing fits (too few devices, no seed data): equal devices
            tau = float(min(counts.values()))
        totals = {d: min(n, tau) for d, n in counts.items()}
    for i, d in enumerate(devices):
        if d is None:
            continue
        w[i] = 0.0 if d in exclude else totals[d] / counts[d]
    return w


@dataclass
class Admission:
    """What a round's admission did, per device."""

    admitted: dict[str, int] = field(default_factory=dict)
    held_back: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.admitted.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "admitted": self.total,
            "admitted_per_device": dict(sorted(self.admitted.items())),
            "held_back_per_device": {d: n for d, n in sorted(self.held_back.items()) if n},
        }


def admit(
    data: TrainerData,
    max_share: float,
    floor: int = 0,
    quarantined: Collection[str] = (),
) -> Admission:
    """Move each device's quota of waiting samples into the replay buffer and the ring, in
    one transaction (exactly once); quarantined devices' samples stay where they are."""
    devices = sorted(
        d
        for d in (replies.text(v) for v in data.client.smembers(data.pending_devices_key))
        if d not in quarantined
    )
    lists = [data.keys.pending(data.model, d) for d in devices]
    out = Admission()

    def txn(pipe: Any) -> None:
        counts = {d: int(pipe.llen(k)) for d, k in zip(devices, lists, strict=True)}
        quota = share_quota({d: n for d, n in counts.items() if n}, max_share, floor)
        batches = []
        for d, key in zip(devices, lists, strict=True):
            q = quota.get(d, 0)
            if q:
                blobs = [replies.binary(b) for b in pipe.lrange(key, 0, q - 1)]
                batches.append((d, key, q, data.unpack_kept(blobs, d)))
        counters = data.read_counters(pipe)
        plans = [(d, key, q, s, data.plan(counters, s, admit=True)) for d, key, q, s in batches]
        pipe.multi()
        for _d, key, q, samples, writes in plans:
            data.add_to(pipe, counters, samples, writes)  # the counters as of every plan
            pipe.ltrim(key, q, -1)
        for d in devices:
            if counts[d] - quota.get(d, 0) <= 0:
                pipe.srem(data.pending_devices_key, d)
        out.admitted = {d: q for d, _k, q, _s, _w in plans}
        out.held_back = {d: counts[d] - quota.get(d, 0) for d in devices}

    data.client.transaction(txn, *lists, data.pending_devices_key, *data.watch_keys)
    if any(out.held_back.values()):
        logger.info(
            "admitted %d samples; held back %s (share cap %.2f)",
            out.total,
            {d: n for d, n in out.held_back.items() if n},
            max_share,
        )
    return out
