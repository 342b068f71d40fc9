"""``/metrics``: Prometheus text exposition (rollouts, devices, edge counters, API requests)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from cloud.api import metrics as exposition
from cloud.api.auth import ViewerDep
from cloud.api.deps import FleetDep, RolloutsDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"description": "text exposition format 0.0.4",
                     "content": {exposition.CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)  # fmt: skip
def read_metrics(
    request: Request, fleet: FleetDep, rollouts: RolloutsDep, _: ViewerDep
) -> Response:
    """Scrape with a viewer token (Prometheus ``authorization: {credentials: ...}``)."""
    text = exposition.exposition(
        fleet,
        rollouts.controller,
        request.app.state.request_counts,
        request.app.state.controller_loop,
    )
    return Response(text, media_type=exposition.CONTENT_TYPE)
