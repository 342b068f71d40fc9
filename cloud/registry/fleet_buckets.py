"""The buckets a device is counted in, and the fleet's figures read back from them
(``cloud.registry.fleet_counts`` keeps the counts).

>>> from shared.messages import EdgeStatus
>>> s = EdgeStatus(device_id="pi-1", fleet="lab", model="digits", version=3, state="serving")
>>> sorted(buckets(s).fields)
['devices', 'model:digits', 'mv:digits|v3', 'vh:v3|serving']
>>> figures_of({"devices": 2, "vh:v3|serving": 1, "vh:unknown|offline": 1}, []).by_health()
{'offline': 1, 'serving': 1}
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.keys import check_name
from shared.messages import EdgeCounters, EdgeStatus

#: EdgeCounters fields summed over the online devices (every int counter).
COUNTERS = tuple(
    name
    for name, f in EdgeCounters.model_fields.items()
    if f.annotation is int  # fallback_reasons is summed per reason; adapter_active is a flag
)


@dataclass
class Counted:
    """What one report counts a device as: its buckets (name -> amount), whether it
    reports stale update metadata, and until when (None: offline)."""

    fields: dict[str, int]
    stale: bool = False
    deadline: float | None = None

    def record(self) -> str:
        # amounts as strings: HINCRBY takes them exactly (Lua numbers are doubles)
        return json.dumps({"f": {k: str(v) for k, v in self.fields.items()}, "x": int(self.stale)})


def version_of(version: int | None) -> str:
    """How the counts name a served version."""
    return f"v{version}" if version is not None else "baseline"


def safe(name: str) -> bool:
    """Whether ``name`` is a name edgeloop writes (a device id, model or cursor from outside
    may not be)."""
    try:
        check_name("name", name)
    except ValueError:
        return False
    return True


def buckets(status: EdgeStatus | None, deadline: float | None = None) -> Counted:
    """The buckets of a device whose latest report is ``status`` (None: expired or
    unreadable, i.e. offline), exactly as ``GET /v1/fleet`` and ``/metrics`` count it."""
    if status is None:
        return Counted({"devices": 1, "vh:unknown|offline": 1})
    fields = {"devices": 1, f"vh:{version_of(status.version)}|{status.state}": 1}
    for model in list(status.models) or [status.model]:
        serving = status.serving(model)
        if serving is None or not safe(model):
            continue
        fields[f"model:{model}"] = 1
        fields[f"mv:{model}|{version_of(serving.version)}"] = 1
    c = status.counters
    for name in COUNTERS:
        if value := getattr(c, name):
            fields[f"e:{name}"] = value
    for reason, n in c.fallback_reasons.items():
        if n:
            fields[f"reason:{reason}"] = fields.get(f"reason:{reason}", 0) + n
    return Counted(fields, status.stale, deadline if deadline is not None else time.time())


@dataclass
class Figures:
    """The fleet's counts as one read: no device was read to make them."""

    devices: int = 0
    #: (version label, health) -> devices
    version_health: dict[tuple[str, str], int] = field(default_factory=dict)
    #: model -> online devices serving it
    models: dict[str, int] = field(default_factory=dict)
    #: model -> version label -> online devices
    model_versions: dict[str, dict[str, int]] = field(default_factory=dict)
    #: EdgeCounters name -> sum over online devices
    edge: dict[str, int] = field(default_factory=dict)
    #: fallback reason -> sum over online devices
    reasons: dict[str, int] = field(default_factory=dict)
    #: online devices that report stale update metadata
    stale: list[str] = field(default_factory=list)

    def by_version(self) -> dict[str, int]:
        return _sum_by(self.version_health, 0)

    def by_health(self) -> dict[str, int]:
        return _sum_by(self.version_health, 1)


def _sum_by(pairs: dict[tuple[str, str], int], at: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for pair, n in pairs.items():
        out[pair[at]] = out.get(pair[at], 0) + n
    return {k: v for k, v in sorted(out.items()) if v}


def figures_of(counts: dict[str, int], stale: Iterable[str]) -> Figures:
    """Figures from the counts hash (``FleetKeys.fleet_counts``) and the stale set."""
    out = Figures(stale=sorted(stale))
    for name, n in counts.items():
        if not n:
            continue
        kind, _, rest = name.partition(":")
        if name == "devices":
            out.devices = n
        elif kind == "vh":
            version, _, health = rest.partition("|")
            out.version_health[(version, health)] = n
        elif kind == "model":
            out.models[rest] = n
        elif kind == "mv":
            model, _, version = rest.partition("|")
            out.model_versions.setdefault(model, {})[version] = n
        elif kind == "e":
            out.edge[rest] = n
        elif kind == "reason":
            out.reasons[rest] = n
    return out
