"""``/healthz``: is the API up, and can it reach the registry."""

from __future__ import annotations

from fastapi import APIRouter, Response

from cloud.api.deps import ViewDep
from cloud.api.schemas import HealthPublic
from cloud.api.views.versions import ping

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    summary="Health check",
    responses={503: {"model": HealthPublic, "description": "The registry's Redis is unreachable"}},
)
def read_health(view: ViewDep, response: Response) -> HealthPublic:
    redis_state = ping(view.registry.client)
    ok = redis_state == "ok"
    if not ok:
        response.status_code = 503
    return HealthPublic(status="ok" if ok else "unavailable", fleet=view.fleet, redis=redis_state)
