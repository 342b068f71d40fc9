"""The chaos scenario's fault schedule, drawn from the seed: the same seed, the same
faults on the same targets at the same moments, so that a failing run can be repeated.

Times are seconds after the fleet serves. The quick schedule always freezes Redis
for 15 s (the outage the demo once died of) and fits the quick demo's run (35 s
before the drift, at least 80 s after it): every fault is over by about 100 s.

>>> a, b = draw(7, quick=True, edges=3), draw(7, quick=True, edges=3)
>>> a == b, a[0].kind, a[0].duration
(True, 'redis-freeze', 15.0)
>>> sorted({f.kind for f in a})
['clock-step', 'cut', 'disk-full', 'kill', 'redis-freeze', 'redis-kill']
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["redis-freeze", "redis-kill", "kill", "cut", "clock-step", "disk-full"]
#: when a kill lands: at its time, or at the first publish (the trainer) or install
#: of a new version (an edge) after it
Moment = Literal["at", "publish", "install"]

#: The quick run's freeze: the outage that used to end the demo (``tests/cloud/demo/test_chaos.py``).
QUICK_FREEZE_S = 15.0
#: How long the cut-off edge cannot reach Redis.
CUT_S = 60.0
#: How far the edge's clock is stepped.
CLOCK_STEP_S = 3600


@dataclass(frozen=True)
class Fault:
    kind: Kind
    target: str
    at: float
    duration: float = 0.0
    moment: Moment = "at"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "at": round(self.at, 1),
            "duration": round(self.duration, 1),
            "moment": self.moment,
        }


def draw(seed: int, quick: bool, edges: int) -> list[Fault]:
    """The faults of one run, in the order they start."""
    rng = random.Random(seed)
    span = 90.0 if quick else 200.0  # by when every fault has started
    freeze_at = rng.uniform(3.0, 12.0)
    freeze_s = QUICK_FREEZE_S if quick else rng.uniform(5.0, 30.0)
    faults = [
        Fault("redis-freeze", "redis", freeze_at, freeze_s),
        # after the freeze: one fault on Redis at a time
        Fault("redis-kill", "redis", freeze_at + freeze_s + rng.uniform(5.0, 20.0)),
    ]
    cut_edge = f"edge-{edges}"
    clock_edge = f"edge-{max(1, edges - 1)}"
    faults.append(Fault("cut", cut_edge, rng.uniform(5.0, 30.0), CUT_S))
    # the cut edge's state dir fills while it spools behind the cut
    faults.append(Fault("disk-full", cut_edge, faults[-1].at + rng.uniform(10.0, 25.0), 15.0))
    # the cloud's blob directory fills across a round: its publish cannot write the file
    faults.append(Fault("disk-full", "blobs", rng.uniform(20.0, span - 40), 40.0))
    faults.append(Fault("clock-step", clock_edge, rng.uniform(5.0, 40.0), rng.uniform(20.0, 40.0)))
    faults.append(
        Fault("kill", "trainer", rng.uniform(10.0, span - 20), moment=_pick(rng, "publish"))
    )
    faults.append(
        Fault("kill", "edge-1", rng.uniform(10.0, span - 20), moment=_pick(rng, "install"))
    )
    faults.append(Fault("kill", "api", rng.uniform(5.0, span)))
    faults.append(Fault("kill", "controller", rng.uniform(5.0, span)))
    return sorted(faults, key=lambda f: f.at)


def _pick(rng: random.Random, moment: Moment) -> Moment:
    return moment if rng.random() < 0.5 else "at"
