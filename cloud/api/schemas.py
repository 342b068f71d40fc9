"""The public shapes of the REST API: what ``cloud.versions_view`` returns and the CLI reads.

``XPublic`` is what a client sees of X. Write shapes (``XCreate``) join them
when the API grows writes (rollouts, pins, tokens).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.messages import (
    Explanation,
    Flips,
    ModelManifest,
    ModelMetrics,
    SignedManifest,
    WeightChange,
)

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
