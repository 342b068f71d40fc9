"""``/v1/models/{model}/diff``: two versions compared on the same data."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.api.deps import ModelName, RefQuery, ViewDep
from cloud.api.errors import error
from cloud.api.schemas import DiffPublic

router = APIRouter(prefix="/v1/models/{model}/diff", tags=["versions"])


@router.get(
    "",
    summary="Compare two versions",
    responses={
        404: error("Unknown model or version", "digits has no version 9"),
        409: error(
            "A version's file does not load in this runtime",
            "not a valid TFLite file: not a TFLite flatbuffer (no TFL3 identifier)",
        ),
        422: error(
            "Malformed parameter",
            "query parameter 'a': name a version by number "
            "(3 or v3), label (stable) or sha256 (or 6+ hex digits of it)",
        ),
    },
)
def diff_versions(model: ModelName, a: RefQuery, b: RefQuery, view: ViewDep) -> DiffPublic:
    """Both int8 files run in the edge runtime on the evaluation data as it is now (holdout
    and recent window): metrics side by side, predictions that flipped from a to b, bytes
    and per-layer change."""
    return view.diff_versions(model, a, b)
