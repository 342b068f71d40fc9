"""Rollout state: what moves a fleet from version A to version B in stages.

It crosses processes (the controller writes it, the REST API and the CLI read
it), so it lives here beside the other wire messages. The edges never read it:
they read only their desired version (``desired_sha``).

>>> r = RolloutSpec(model="digits", target="3")
>>> [s.name for s in r.stages]
['canary', 'half', 'all']
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from shared.messages import WireModel

RolloutState = Literal["running", "paused", "waiting", "completed", "rolled_back", "aborted"]
StageStatus = Literal["pending", "running", "passed", "failed"]

#: States in which a rollout still owns its devices' assignments.
ACTIVE_STATES: frozenset[str] = frozenset({"running", "paused", "waiting"})


class GatePolicy(BaseModel):
    """Health thresholds a stage must meet before it is promoted."""

    min_labeled: int = Field(50, ge=0, description="labeled predictions on B before any decision")
    min_requests: int = Field(100, ge=0, description="predictions on B before rates are judged")
    min_dwell_s: float = Field(10.0, ge=0, description="time on B before a pass")
    min_devices: int = Field(
        2,
        ge=1,
        description="distinct ring devices whose reports on B a pass needs (each serving B, "
        "with predictions and labeled ones when min_requests and min_labeled ask for them), "
        "so that no one device's reports promote a version; a smaller ring needs all of them",
    )
    max_accuracy_drop: float = Field(0.05, ge=0, le=1, description="vs the same devices on A")
    max_error_rise: float = Field(
        0.2,
        ge=0,
        description="a lower-is-better metric (mae) on B may exceed the same devices' on A "
        "by this share of A's",
    )
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_fallback_rate: float = Field(0.05, ge=0, le=1)
    max_p99_ratio: float = Field(2.0, gt=0, description="p99 latency on B / on A")
    p99_floor_ms: float = Field(
        5.0, ge=0, description="a p99 on B below this is never a regression (timer noise)"
    )
    stage_timeout_s: float = Field(900.0, gt=0, description="no decision by then: roll back")


class StageSpec(BaseModel):
    """A ring: a share of the fleet, a count, or devices an operator names."""

    name: str = Field(min_length=1, max_length=40)
    percent: float | None = Field(None, gt=0, le=100)
    count: int | None = Field(None, ge=1)
    devices: list[str] | None = None

    @model_validator(mode="after")
    def _one_size(self) -> StageSpec:
        given = [v for v in (self.percent, self.count, self.devices) if v is not None]
        if len(given) != 1:
            raise ValueError("a stage takes exactly one of percent, count or devices")
        return self


def default_stages() -> list[StageSpec]:
    return [
        StageSpec(name="canary", percent=10),
        StageSpec(name="half", percent=50),
        StageSpec(name="all", percent=100),
    ]


class RolloutSpec(BaseModel):
    """What an operator asks for (``POST /v1/rollouts``)."""

    model: str = Field(min_length=1, max_length=64)
    target: str = Field(description="version number, sha256 or label of version B")
    stages: list[StageSpec] = Field(default_factory=default_stages, min_length=1)
    auto_promote: bool = Field(True, description="promote a passing stage without an operator")
    gate: GatePolicy = Field(default_factory=GatePolicy)
    devices: list[str] | None = Field(None, description="limit the rollout to these devices")


class DeviceSample(BaseModel):
    """One device's counters at a moment, to measure what happened since."""

    sha256: str | None = None
    predictions: int = 0
    failed: int = 0
    fallbacks: int = 0
    labeled: int = 0
    correct: int = 0
    p99_ms: float | None = None
    accuracy: float | None = None
    metric: str = Field("accuracy", description="the task's metric rolling_metric is in")
    rolling_metric: float | None = None
    ts: float = Field(default_factory=time.time)


class StageState(BaseModel):
    name: str
    devices: list[str] = Field(default_factory=list)
    status: StageStatus = "pending"
    started_at: float | None = None
    decided_at: float | None = None
    #: each ring device's counters when the stage began (on A)...
    before: dict[str, DeviceSample] = Field(default_factory=dict)
    #: ...and when it was first seen serving B.
    switched: dict[str, DeviceSample] = Field(default_factory=dict)
    gate: dict[str, Any] = Field(default_factory=dict, description="last gate evaluation")


class RolloutEvent(BaseModel):
    ts: float = Field(default_factory=time.time)
    what: str
    by: str = "controller"


class Rollout(WireModel):
    """A rollout's whole state, written by the controller and by operator actions."""

    id: str
    fleet: str
    model: str
    from_version: int | None
    from_sha256: str | None
    to_version: int
    to_sha256: str
    state: RolloutState = "running"
    reason: str = ""
    auto_promote: bool = True
    gate: GatePolicy = Field(default_factory=GatePolicy)
    device_filter: list[str] | None = None
    stages: list[StageState]
    current: int = 0
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    events: list[RolloutEvent] = Field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def log(self, what: str, by: str = "controller") -> None:
        self.events.append(RolloutEvent(what=what, by=by))
        self.updated_at = time.time()


class AssignmentNotice(WireModel):
    """On the delta stream (field ``assign``): these devices (all when empty) should
    read their desired version again."""

    model: str
    devices: list[str] = Field(default_factory=list)

    def concerns(self, model: str, device: str) -> bool:
        return self.model == model and (not self.devices or device in self.devices)


def desired_sha(target: str | None, assignment: str | None, pin: str | None) -> str | None:
    """What a device should serve: its pin, else its rollout assignment, else the fleet target.

    >>> desired_sha("a" * 64, None, None)[:3], desired_sha("a", "b", None), desired_sha("a", "b", "c")
    ('aaa', 'b', 'c')
    """
    return pin or assignment or target
