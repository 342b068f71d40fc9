"""``/v1/rollouts``: start a rollout, read them, and act on one (admin for changes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from cloud.api.auth import AdminDep, ViewerDep
from cloud.api.deps import RolloutId, RolloutsDep
from cloud.api.errors import error
from cloud.api.schemas import RolloutCreate, RolloutPublic, RolloutsPublic

router = APIRouter(prefix="/v1/rollouts", tags=["rollouts"])

_404 = error("No such rollout", "no rollout '4be0c1f2a9d3' in fleet default")
_409 = error(
    "The rollout's state does not allow it", "cannot resume rollout 4be0c1f2a9d3: it is completed"
)


@router.post(
    "",
    status_code=201,
    summary="Start a rollout",
    responses={
        404: error("Unknown model or version", "digits has no version 9"),
        409: error(
            "A rollout of the model is in progress, or the version is already the target",
            "rollout 4be0c1f2a9d3 of digits is in progress; finish, abort or roll it back first",
        ),
        422: error(
            "Malformed spec, or no device to roll out to",
            "no device to roll out to (none seen recently, or all pinned)",
        ),
    },
)
def create_rollout(spec: RolloutCreate, view: RolloutsDep, who: AdminDep) -> RolloutPublic:
    """Move ``model`` from the fleet's target (A) to ``target`` (B) ring by ring. Rings are
    chosen by a hash of the device ids (the same canaries each time) unless a stage names
    devices; each stage's gate compares B with the same devices on A. The first stage starts
    at once; the controller steps the rest."""
    return view.create_rollout(spec, by=who.name)


@router.get("", summary="List rollouts")
def list_rollouts(
    view: RolloutsDep,
    _: ViewerDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="the newest N")] = 50,
) -> RolloutsPublic:
    return view.list_rollouts(limit)


@router.get("/{rollout_id}", summary="Get a rollout", responses={404: _404})
def read_rollout(rollout_id: RolloutId, view: RolloutsDep, _: ViewerDep) -> RolloutPublic:
    """Stages with their devices and last gate figures and reasons, events, device counts."""
    return view.read_rollout(rollout_id)


@router.post("/{rollout_id}/pause", summary="Pause a rollout", responses={404: _404, 409: _409})
def pause_rollout(rollout_id: RolloutId, view: RolloutsDep, who: AdminDep) -> RolloutPublic:
    """Hold it where it is: devices keep what they were assigned, no stage is judged."""
    return view.act(rollout_id, "pause", who.name)


@router.post(
    "/{rollout_id}/resume", summary="Resume a paused rollout", responses={404: _404, 409: _409}
)
def resume_rollout(rollout_id: RolloutId, view: RolloutsDep, who: AdminDep) -> RolloutPublic:
    return view.act(rollout_id, "resume", who.name)


@router.post("/{rollout_id}/abort", summary="Abort a rollout", responses={404: _404, 409: _409})
def abort_rollout(rollout_id: RolloutId, view: RolloutsDep, who: AdminDep) -> RolloutPublic:
    """Stop it and drop its assignments: its devices go back to the fleet's target (A)."""
    return view.act(rollout_id, "abort", who.name)


@router.post(
    "/{rollout_id}/promote",
    summary="Promote the current stage by hand",
    responses={404: _404, 409: _409},
)
def promote_rollout(rollout_id: RolloutId, view: RolloutsDep, who: AdminDep) -> RolloutPublic:
    """Pass the current stage whatever its gate says and move to the next (or complete)."""
    return view.act(rollout_id, "promote", who.name)


@router.post(
    "/{rollout_id}/rollback", summary="Roll a rollout back", responses={404: _404, 409: _409}
)
def rollback_rollout(rollout_id: RolloutId, view: RolloutsDep, who: AdminDep) -> RolloutPublic:
    """Every device of the rollout goes back to A; after completion, the target moves back too."""
    return view.act(rollout_id, "rollback", who.name)
