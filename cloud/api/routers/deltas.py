"""``/v1/models/{model}/delta``: the patch that takes an edge from the version it holds to another."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from cloud.api.deps import ModelName, RefQuery, Sha256Query, ViewDep
from cloud.api.errors import error

router = APIRouter(prefix="/v1/models/{model}/delta", tags=["deltas"])

OCTETS = "application/octet-stream"


@router.get(
    "",
    summary="Get a patch from a base version to a target",
    response_class=Response,
    responses={
        200: {
            "description": "The patch (shared/delta.py format); apply it to the base, then check "
            "the target's sha256 (also in the X-Edgeloop-Target-Sha256 header)",
            "content": {OCTETS: {"schema": {"type": "string", "format": "binary"}}},
        },
        404: error(
            "Unknown model, target or base",
            "base 3f1c9a5e7b2d is not a version of digits: fetch the full file",
        ),
        409: error(
            "No patch is possible: fetch the full file",
            "no patch from 3f1c9a5e7b2d: lengths differ",
        ),
        422: error(
            "Malformed parameter",
            "query parameter 'base': base is the full sha256 (64 lowercase hex digits) of the version the edge holds",
        ),
    },
)
def read_delta(model: ModelName, base: Sha256Query, target: RefQuery, view: ViewDep) -> Response:
    patch, target_sha = view.read_delta(model, base, target)
    headers = {"X-Edgeloop-Base-Sha256": base, "X-Edgeloop-Target-Sha256": target_sha}
    return Response(patch, media_type=OCTETS, headers=headers)
