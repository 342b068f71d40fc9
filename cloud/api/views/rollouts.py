"""Rollouts in the public shapes of the REST API: the controller's state plus where
its devices are now (from their latest reports)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from cloud.api.schemas import PinPublic, PinsRemoved, RolloutDevices, RolloutPublic, RolloutsPublic
from cloud.registry.versions import Registry
from cloud.rollout.controller import RolloutController
from shared.errors import NotFound
from shared.rollouts import Rollout, RolloutSpec

Action = Literal["pause", "resume", "abort", "promote", "rollback"]


class RolloutsView:
    """Rollouts and pins: one call each from the REST API's handlers."""

    def __init__(self, controller: RolloutController, registry: Registry) -> None:
        self.controller = controller
        self.registry = registry

    def create_rollout(self, spec: RolloutSpec, by: str) -> RolloutPublic:
        plain = RolloutSpec.model_validate(spec.model_dump())
        return self.public(self.controller.create(plain, by=by))

    def list_rollouts(self, limit: int = 50) -> RolloutsPublic:
        return RolloutsPublic(rollouts=[self.public(r) for r in self.controller.recent(limit)])

    def read_rollout(self, rollout_id: str) -> RolloutPublic:
        return self.public(self.controller.get(rollout_id))

    def act(self, rollout_id: str, action: Action, by: str) -> RolloutPublic:
        actions: dict[str, Callable[[str, str], Rollout]] = {
            "pause": self.controller.pause,
            "resume": self.controller.resume,
            "abort": self.controller.abort,
            "promote": self.controller.promote,
            "rollback": self.controller.rollback,
        }
        return self.public(actions[action](rollout_id, by))

    def pin_device(self, device_id: str, model: str, ref: str, by: str) -> PinPublic:
        record = self.controller.pin(model, device_id, ref, by)
        return PinPublic(
            device_id=device_id, model=model, version=record.version, sha256=record.sha256
        )

    def unpin_device(self, device_id: str, model: str | None, by: str) -> PinsRemoved:
        models = [model] if model is not None else self.registry.models()
        removed = [m for m in models if self.controller.unpin(m, device_id, by)]
        if not removed:
            where = f"to {model}" if model else "to any model"
            raise NotFound(f"device {device_id!r} is not pinned {where}")
        return PinsRemoved(device_id=device_id, models=removed)

    def public(self, r: Rollout) -> RolloutPublic:
        devices = sorted({d for s in r.stages for d in s.devices})
        statuses = self.controller.serving(devices, r.model)
        counts = {"on_target": 0, "on_source": 0, "elsewhere": 0, "offline": 0}
        for status in statuses.values():
            if status is None:
                counts["offline"] += 1
            elif status.sha256 == r.to_sha256:
                counts["on_target"] += 1
            elif r.from_sha256 is not None and status.sha256 == r.from_sha256:
                counts["on_source"] += 1
            else:
                counts["elsewhere"] += 1
        return RolloutPublic(**r.model_dump(), devices=RolloutDevices(total=len(devices), **counts))
