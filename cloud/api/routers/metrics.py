"""``/metrics``: Prometheus exposition (rollouts, devices, edge counters, API requests)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from cloud.api.auth import ViewerDep
from cloud.api.deps import MetricsDep
from cloud.api.metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"])

_TEXT = {
    "description": "Prometheus text exposition format",
    "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
}


@router.get(
    "/metrics", summary="Prometheus metrics", response_class=Response, responses={200: _TEXT}
)
def read_metrics(metrics: MetricsDep, _: ViewerDep) -> Response:
    """Scrape with a viewer token (Prometheus ``authorization: {credentials: ...}``)."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE)
