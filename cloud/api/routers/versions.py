"""``/v1/models/{model}/versions``: a model's versions, their signed manifests and explanations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from cloud.api.deps import ModelName, VersionRef, ViewDep
from cloud.api.errors import error
from cloud.api.schemas import ExplanationPublic, ManifestPublic, VersionsPublic

router = APIRouter(prefix="/v1/models/{model}/versions", tags=["versions"])

_MODEL_404 = error("No such model", "fleet 'default' has no model 'digitz'")
_VERSION_404 = error("No such model or version", "digits has no version 9")
_INVALID_422 = error(
    "Malformed model name or version ref",
    "path parameter 'ref': name a version by number (3 or v3), label (stable) or sha256 "
    "(or 6+ hex digits of it)",
)


@router.get("", summary="List a model's versions", responses={404: _MODEL_404, 422: _INVALID_422})
def list_versions(
    model: ModelName,
    view: ViewDep,
    limit: Annotated[int | None, Query(ge=1, le=10_000, description="only the newest N")] = None,
) -> VersionsPublic:
    """Versions oldest first, each with its labels, trigger, summary and headline metrics."""
    return view.list_versions(model, limit)


@router.get(
    "/{ref}", summary="Get a version's manifest", responses={404: _VERSION_404, 422: _INVALID_422}
)
def read_version(model: ModelName, ref: VersionRef, view: ViewDep) -> ManifestPublic:
    """The manifest, the exact JSON that was signed with its signature, and whether the
    API verified it with the fleet's public key."""
    return view.read_version(model, ref)


@router.get(
    "/{ref}/explanation",
    summary="Get a version's explanation",
    responses={404: _VERSION_404, 422: _INVALID_422},
)
def read_explanation(model: ModelName, ref: VersionRef, view: ViewDep) -> ExplanationPublic:
    """Why the version exists and what it changed: data window, trigger, metrics of parent
    and child, forgetting, flipped predictions, per-layer change, attribution shift and a
    summary. Older manifests (``format`` 1) carry only the free-form part."""
    return view.read_explanation(model, ref)
