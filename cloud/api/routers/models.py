"""``/v1/models``: the models a fleet has published."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.api.deps import ViewDep
from cloud.api.schemas import ModelsPublic

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", summary="List the fleet's models")
def list_models(view: ViewDep) -> ModelsPublic:
    """Every model with at least one published version, its latest version and its labels."""
    return view.list_models()
