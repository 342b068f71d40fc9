"""The public shapes of the REST API: what ``cloud.api.views.versions`` returns and the CLI reads.

``XPublic`` is what a client sees of X; ``XCreate`` is what a client sends to
make one (rollouts, pins, tokens, feedback).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.messages import (
    EdgeCounters,
    Explanation,
    FeedbackEvent,
    Flips,
    ModelManifest,
    ModelMetrics,
    ModelServing,
    SignedManifest,
    WeightChange,
)
from shared.rollouts import Rollout, RolloutSpec, StageSpec
from shared.tokens import Role

SHA_EXAMPLE = "3f1c9a5e7b2d4c6f8a0e1b3d5f7a9c2e4b6d8f0a1c3e5a7b9d2f4c6e8a0b1d3f"


class VersionPublic(BaseModel):
    """One version as a listing shows it."""

    model: str = Field(examples=["digits"])
    version: int = Field(examples=[3])
    sha256: str = Field(examples=[SHA_EXAMPLE])
    size: int = Field(description="bytes of the TFLite file", examples=[46344])
    parent_version: int | None = Field(None, examples=[2])
    parent_sha256: str | None = None
    created_at: float = Field(description="unix time of publishing")
    trigger: str = Field("", examples=["drift"])
    summary: str = ""
    labels: list[str] = Field(default_factory=list, examples=[["latest", "stable"]])
    metrics: dict[str, float] = Field(default_factory=dict, examples=[{"recent_accuracy": 0.92}])


class VersionsPublic(BaseModel):
    model: str
    versions: list[VersionPublic] = Field(description="oldest first")


class ModelPublic(BaseModel):
    name: str = Field(examples=["digits"])
    versions: int = Field(description="published versions", examples=[3])
    latest: VersionPublic | None
    labels: dict[str, int] = Field(
        default_factory=dict, description="label -> version number", examples=[{"latest": 3}]
    )


class ModelsPublic(BaseModel):
    fleet: str = Field(examples=["default"])
    models: list[ModelPublic]


class ManifestPublic(BaseModel):
    """A version's manifest, the exact signed JSON, and whether the API could verify it."""

    version: VersionPublic
    manifest: ModelManifest
    signed: SignedManifest = Field(description="verify manifest_json with the fleet's public key")
    signature_verified: bool = Field(
        description="the signature verified with the API's public key (never serve it if false)"
    )


class ExplanationPublic(BaseModel):
    version: VersionPublic
    explanation: Explanation
    signature_verified: bool


class DiffSide(BaseModel):
    version: VersionPublic
    metrics: ModelMetrics = Field(description="measured now, on the same data as the other side")


class DiffPublic(BaseModel):
    """Two versions compared: both int8 files run in the edge runtime on today's evaluation data."""

    model: str
    a: DiffSide
    b: DiffSide
    earlier_samples: int = Field(description="holdout samples evaluated")
    recent_samples: int = Field(description="recent-window samples evaluated")
    flips: Flips = Field(description="from a to b: fixed = a wrong, b right")
    weights: WeightChange = Field(description="per-layer change from a to b")
    bytes_differing: int | None = Field(
        description="bytes at which the two files differ (None: different lengths)"
    )
    b_descends_from_a: bool = Field(description="a is in b's lineage")


class HealthPublic(BaseModel):
    status: str = Field(examples=["ok"])
    fleet: str
    redis: str = Field(examples=["ok"])


class ErrorPublic(BaseModel):
    detail: str = Field(examples=["digits has no version 9"])


# -- devices and the fleet ----------------------------------------------------------

#: A device id, model or rollout id as a key part (shared.keys.check_name).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"

DeviceHealth = Literal["starting", "serving", "degraded", "stopping", "offline"]


class ServingPublic(ModelServing):
    """One model a device serves: its report on it, and what it should serve of it."""

    desired_sha256: str | None = Field(
        None, description="pin, else rollout assignment, else target"
    )
    pinned_sha256: str | None = None
    assigned_sha256: str | None = Field(None, description="set by a running rollout")


class DevicePublic(BaseModel):
    """One device: its last report (gone after the report's TTL: then ``offline``)."""

    device_id: str = Field(examples=["pi-07"])
    health: DeviceHealth = Field(
        description="the reported state, or offline when the report expired"
    )
    last_seen: float | None = Field(None, description="unix time of the last report")
    model: str | None = Field(None, examples=["digits"])
    version: int | None = Field(
        None, description="version served (None: baseline or unknown)", examples=[3]
    )
    sha256: str | None = Field(None, examples=[SHA_EXAMPLE])
    desired_sha256: str | None = Field(
        None, description="pin, else rollout assignment, else target"
    )
    pinned_sha256: str | None = None
    assigned_sha256: str | None = Field(None, description="set by a running rollout")
    runtime: str | None = None
    uptime_s: float | None = None
    rolling_accuracy: float | None = Field(None, examples=[0.94])
    metric: str | None = Field(None, description="the task's metric of rolling_metric")
    rolling_metric: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None
    counters: EdgeCounters | None = None
    last_error: str | None = None
    refused_sha256: str | None = None
    revert_reason: str | None = None
    stale: bool = Field(
        False,
        description="the device's signed update metadata (the fleet's TUF timestamp or its "
        "director order) has expired: it keeps serving what it has and installs nothing new",
    )
    models: dict[str, ServingPublic] = Field(
        default_factory=dict,
        description="every model the device serves, by name; the top-level fields are its "
        "first model's",
    )


class DevicesPublic(BaseModel):
    fleet: str = Field(examples=["default"])
    total: int = Field(description="devices ever seen (the list may be a page of them)")
    devices: list[DevicePublic] = Field(
        description="most recently seen first; by device id when paged with a cursor"
    )
    next_cursor: str | None = Field(
        None,
        description="pass as `cursor` for the next page (by id); null: no more, or paged by offset",
        examples=["pi-07"],
    )


class ModelTarget(BaseModel):
    """One model of the fleet: its target, its rollout, and the devices that serve it."""

    target_version: int | None = Field(None, examples=[3])
    target_sha256: str | None = None
    active_rollout: str | None = Field(None, examples=["4be0c1f2a9d3"])
    ordered_version: int | None = Field(
        None,
        description="the version the fleet's signed director order names (an API with "
        "director_key; edges with director_keys follow it, not the unsigned target)",
        examples=[3],
    )
    ordered_sha256: str | None = None
    devices: int = Field(0, description="online devices that serve the model", examples=[11])
    by_version: dict[str, int] = Field(
        default_factory=dict,
        description="those devices by the version of the model they serve",
        examples=[{"v3": 10, "v4": 1}],
    )


class QuarantinedPublic(BaseModel):
    """A device whose feedback for a model is kept aside, not trained on."""

    device_id: str = Field(examples=["pi-07"])
    model: str = Field(examples=["digits"])
    reason: str = Field(
        examples=["labels disagree with the model on 91% of 240 samples; the fleet's median 6%"]
    )
    rate: float = Field(description="the device's disagreement rate with the model")
    fleet_rate: float = Field(description="the other devices' median rate")
    checked: int = Field(description="samples checked")
    kept: int = Field(description="its samples kept aside, re-queued for training on release")
    since: float


class QuarantinePublic(BaseModel):
    fleet: str
    devices: list[QuarantinedPublic] = Field(default_factory=list)


class QuarantineReleased(BaseModel):
    device_id: str
    models: list[str] = Field(description="models the device was released for")
    requeued: int = Field(description="kept samples queued for training again")


class FleetPublic(BaseModel):
    """Device counts by version and by health."""

    fleet: str = Field(examples=["default"])
    devices: int = Field(examples=[12])
    online: int = Field(examples=[11])
    by_version: dict[str, int] = Field(
        description="'v<N>', 'baseline' (no version), or 'unknown' (offline)",
        examples=[{"v3": 10, "v4": 1, "unknown": 1}],
    )
    by_health: dict[str, int] = Field(examples=[{"serving": 11, "offline": 1}])
    stale: list[str] = Field(
        default_factory=list,
        description="online devices that report stale update metadata (an expired TUF "
        "timestamp or director order: a frozen repository, or a director nobody renews)",
        examples=[["pi-07"]],
    )
    models: dict[str, ModelTarget] = Field(default_factory=dict)
    quarantined: list[QuarantinedPublic] = Field(
        default_factory=list,
        description="devices whose feedback is kept aside, not trained on: their labels "
        "disagree with the fleet's far beyond chance (`edgeloop quarantine release`)",
    )


class StatusAccepted(BaseModel):
    device_id: str = Field(examples=["pi-07"])
    ttl_s: int = Field(description="the device counts as offline this long after the report")


# -- pins -----------------------------------------------------------------------------


class PinCreate(BaseModel):
    """Pin a device to a version of a model: rollouts leave it alone."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"model": "digits", "version": "3"}]}
    )

    model: str = Field(pattern=NAME_PATTERN, examples=["digits"])
    version: str = Field(
        min_length=1,
        max_length=64,
        description="version number (3 or v3), label or sha256",
        examples=["3"],
    )


class PinPublic(BaseModel):
    device_id: str = Field(examples=["pi-07"])
    model: str = Field(examples=["digits"])
    version: int = Field(examples=[3])
    sha256: str = Field(examples=[SHA_EXAMPLE])


class PinsRemoved(BaseModel):
    device_id: str
    models: list[str] = Field(description="models the device was unpinned from")


# -- rollouts -------------------------------------------------------------------------


class RolloutCreate(RolloutSpec):
    """Start moving a model from the fleet's target to ``target``, ring by ring."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "digits",
                    "target": "4",
                    "stages": [
                        {"name": "canary", "count": 1},
                        {"name": "half", "percent": 50},
                        {"name": "all", "percent": 100},
                    ],
                    "auto_promote": True,
                    "gate": {"min_labeled": 50, "max_accuracy_drop": 0.05},
                },
            ]
        },
    )

    model: str = Field(pattern=NAME_PATTERN, examples=["digits"])
    target: str = Field(
        min_length=1,
        max_length=64,
        description="version number (4 or v4), label or sha256 of version B",
        examples=["4"],
    )
    devices: list[str] | None = Field(
        None, max_length=100_000, description="limit the rollout to these devices"
    )

    @field_validator("devices")
    @classmethod
    def _device_ids(cls, v: list[str] | None) -> list[str] | None:
        return v if v is None else [_device_id(d) for d in v]

    @field_validator("stages")
    @classmethod
    def _stage_devices(cls, v: list[StageSpec]) -> list[StageSpec]:
        for stage in v:
            for d in stage.devices or []:
                _device_id(d)
        return v


def _device_id(v: str) -> str:
    import re

    if not re.match(NAME_PATTERN, v):
        raise ValueError(f"invalid device id {v!r}: use 1-64 letters, digits, '_', '.' or '-'")
    return v


class RolloutDevices(BaseModel):
    """Where the rollout's devices are, from their latest reports."""

    total: int = Field(description="devices in the rollout's rings")
    on_target: int = Field(description="serving version B")
    on_source: int = Field(description="serving version A")
    elsewhere: int = Field(description="serving another version (a pin, the baseline)")
    offline: int = Field(description="no recent report")


class RolloutPublic(Rollout):
    """A rollout's whole state (stages, last gate figures and reasons, events) and its devices."""

    devices: RolloutDevices


class RolloutsPublic(BaseModel):
    rollouts: list[RolloutPublic] = Field(description="newest first")


# -- feedback -------------------------------------------------------------------------


class FeedbackEventCreate(FeedbackEvent):
    """A ``FeedbackEvent`` as HTTP clients send it: ``x`` a flat list of the sample's values,
    or nested lists in the model's input shape."""

    x: list[Any] | None = Field(  # type: ignore[assignment]
        None,
        description="the sample: nested lists in the model's input shape, or a flat list",
        max_length=65536,
    )


class FeedbackBatch(BaseModel):
    """Several events in one request (an edge's batch)."""

    model_config = ConfigDict(extra="forbid")

    events: list[FeedbackEventCreate] = Field(min_length=1, max_length=1000)


class FeedbackEntriesPublic(BaseModel):
    entries: list[str] = Field(
        description="stream entry ids, one per relayed entry, in order",
        examples=[["1718000000000-0"]],
    )


class FeedbackAcceptedPublic(BaseModel):
    accepted: int = Field(
        description="events appended to their models' feedback streams", examples=[2]
    )
    entries: list[str] = Field(
        description="stream entry ids (one per batch of events)", examples=[["1718000000000-0"]]
    )


# -- tokens ---------------------------------------------------------------------------


class TokenCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "pi-07", "role": "device", "device": "pi-07"}]},
    )

    name: str = Field(pattern=NAME_PATTERN, examples=["alice"])
    role: Role = Field(examples=["viewer"])
    device: str | None = Field(
        None, pattern=NAME_PATTERN, description="device tokens only: the device it may post for"
    )
    ttl_s: float | None = Field(
        None,
        gt=0,
        le=10 * 365 * 24 * 3600,
        description="seconds until the token expires; default: the API's token_ttl_s",
    )


class TokenPublic(BaseModel):
    name: str = Field(examples=["alice"])
    role: Role
    device: str | None = None
    created_at: float
    created_by: str = ""
    expires_at: float | None = Field(None, description="epoch seconds; None: never expires")


class TokenIssued(TokenPublic):
    token: str = Field(description="the bearer token: shown this once, stored only hashed")


class TokensPublic(BaseModel):
    tokens: list[TokenPublic]


class DirectorOrdersPublic(BaseModel):
    """What decides the version one device serves of a model, as an edge reads it from Redis:
    the director's signed orders (the device's own and the fleet's, exactly as stored; the
    edge verifies them) and the unsigned target, assignment and pin (for edges without
    director keys)."""

    model: str = Field(examples=["digits"])
    device_id: str = Field(examples=["pi-07"])
    device_order: str | None = Field(
        None, description="the signed order for this device (a SignedOrder's JSON), if any"
    )
    fleet_order: str | None = Field(
        None, description="the signed order for the whole fleet (a SignedOrder's JSON), if any"
    )
    target: str | None = Field(None, description="unsigned: the fleet's target sha256")
    assignment: str | None = Field(None, description="unsigned: a rollout's sha256 for the device")
    pin: str | None = Field(None, description="unsigned: an operator's pin for the device")
