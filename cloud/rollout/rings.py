"""Which devices are in which ring.

Devices are ordered by a hash of their id alone, so the same devices are the
canaries of every rollout (an operator who wants others names them), and
rings are cumulative: each stage includes the devices of the ones before.

>>> members([StageSpec(name="c", count=1), StageSpec(name="all", percent=100)], ["a", "b", "c"])
[['c'], ['c', 'b', 'a']]
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

from shared.rollouts import StageSpec


def ring_order(devices: Iterable[str]) -> list[str]:
    """Devices in canary order: stable across rollouts, spread over ids."""
    return sorted(set(devices), key=lambda d: hashlib.sha256(d.encode()).digest())


def members(stages: list[StageSpec], devices: list[str]) -> list[list[str]]:
    """The devices of each stage (cumulative), in ring order."""
    order = ring_order(devices)
    known = set(order)
    out: list[list[str]] = []
    chosen: list[str] = []
    for stage in stages:
        if stage.devices is not None:
            extra = [d for d in stage.devices if d in known]
        else:
            n = (
                stage.count
                if stage.count is not None
                else math.ceil(len(order) * (stage.percent or 0) / 100)
            )
            extra = order[: max(1, min(n, len(order)))] if order else []
        chosen = chosen + [d for d in extra if d not in chosen]
        out.append(list(chosen))
    return out
