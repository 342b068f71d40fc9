"""The rollout controller: moves a fleet from version A to B ring by ring.

What each device should serve is three Redis structures (shared/keys.py):
the fleet ``target``, a running rollout's ``assignments`` and operator
``pins``; an edge serves ``pin or assignment or target`` (shared.rollouts.
desired_sha). A rollout assigns B to one ring at a time, judges the ring's
health from what its devices report, and then promotes (next ring), waits for
an operator, or rolls back by dropping its assignments so that every device
falls back to the target, A. Completing sets the target to B.

All state is in Redis: a restarted controller picks up where the last one
stopped (``step`` is idempotent), and operator actions from the REST API race
safely with it (each change is a WATCH/MULTI on the rollout's key). Edges are
told to look again with an ``assign`` entry on the fleet's delta stream; a
device that was offline reads its desired version when it comes back.

Given a ``Director`` (the setting ``director_key``), every decision is also a
signed director order, written in the same transaction (cloud/rollout/
director.py): a stage's devices are ordered to B, completion orders the fleet
to B, a rollback is a newer order naming A, a pin is the device's own order.
Edges with ``director_keys`` follow only those, so the controller's own idea of
the fleet's version and of pins comes from the signed orders too, never from
what anyone else wrote to ``target`` or ``pins``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import redis
from redis.client import Pipeline

from cloud.registry.publisher import DELTAS_MAXLEN
from cloud.rollout.director import Director, Orders
from cloud.rollout.gate_book import GateBook
from cloud.rollout.health import evaluate
from cloud.rollout.rings import members
from shared import replies
from shared.device_identity import DeviceKeyring
from shared.errors import EdgeloopError, InputError, MessageError, NotFound
from shared.keys import FleetKeys, check_name
from shared.messages import EdgeStatus, ModelServing, VersionRecord
from shared.rollouts import (
    ACTIVE_STATES,
    AssignmentNotice,
    Rollout,
    RolloutSpec,
    RolloutState,
    StageState,
)
from shared.status_report import verified_statuses

logger = logging.getLogger(__name__)

#: Devices not seen for this long are left out of new rollouts' rings.
DEVICE_STALE_S = 24 * 3600


class RolloutError(EdgeloopError):
    """A rollout action cannot be done in the rollout's state."""


class RolloutNotFound(RolloutError, NotFound):
    pass


class RolloutConflict(RolloutError):
    """Another rollout of the model is in progress, or the request contradicts the state."""


#: The end states an operator can stop a rollout in.
_Stopped = Literal["aborted", "rolled_back"]


class Versions(Protocol):
    def get(self, model: str, ref: str | int) -> VersionRecord: ...

    def queue_artifact(self, pipe: Pipeline, sha256: str) -> None: ...


@dataclass
class _Tx:
    """One change's writes: the pipeline (in MULTI), and what the director is to sign:
    the fleet's new version (None: unchanged) and devices' own (None: the fleet's)."""

    pipe: Pipeline
    fleet: str | None = None
    devices: dict[str, str | None] = field(default_factory=dict)


class RolloutController:
    """Creates rollouts, runs them (``step``), and carries out operator actions."""

    def __init__(
        self,
        client: redis.Redis,
        keys: FleetKeys,
        versions: Versions,
        *,
        clock: Callable[[], float] = time.time,
        device_stale_s: float = DEVICE_STALE_S,
        director: Director | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.versions = versions
        #: Set (the setting ``director_key``): every decision is also a signed director
        #: order, in the same transaction; None (development): unsigned writes only.
        self.director = director
        self.clock = clock
        self.device_stale_s = device_stale_s
        #: Enrolled devices' keys: once the fleet has one, a status counts only if signed.
        self.device_keys = DeviceKeyring(client, keys)
        #: Status reports ignored by the gates, by reason.
        self.refused_statuses: Counter[str] = Counter()
        #: Each running stage's figures, kept as its ring's reports arrive.
        self.book = GateBook(client, keys, self.device_keys, self.statuses, self.refused_statuses)

    # -- reading --------------------------------------------------------------

    def get(self, rollout_id: str) -> Rollout:
        raw = self.client.get(self.keys.rollout(rollout_id))
        if raw is None:
            raise RolloutNotFound(f"no rollout {rollout_id!r} in fleet {self.keys.fleet}")
        return Rollout.from_wire(raw)

    def recent(self, limit: int = 50) -> list[Rollout]:
        """The fleet's latest rollouts, newest first (unreadable ones left out)."""
        out = []
        for rollout_id in self._recent_ids(limit):
            try:
                out.append(self.get(rollout_id))
            except (RolloutNotFound, MessageError):
                continue
        return out

    def forget_finished(self, keep: int) -> int:
        """Delete the records of finished rollouts (completed, rolled back, aborted) older
        than the newest ``keep`` rollouts; how many went. A record holds every device of its
        rings (about 0.9 KB a device), so a fleet that rolls out often would otherwise grow
        by a fleet's worth of placements each time. A rollout in progress is never one."""
        old = replies.members(self.client.zrevrange(self.keys.rollouts, keep, -1))
        gone = 0
        for rollout_id in old:
            raw = self.client.get(self.keys.rollout(rollout_id))
            if raw is not None:
                try:
                    if Rollout.from_wire(raw).state in ACTIVE_STATES:
                        continue
                except MessageError:
                    continue  # unreadable: left for an operator to look at
            pipe = self.client.pipeline()
            pipe.delete(self.keys.rollout(rollout_id))
            pipe.zrem(self.keys.rollouts, rollout_id)
            pipe.execute()
            gone += 1
        if gone:
            logger.info("forgot %d finished rollouts (kept the newest %d)", gone, keep)
        return gone

    def _recent_ids(self, limit: int) -> list[str]:
        return replies.members(self.client.zrevrange(self.keys.rollouts, 0, limit - 1))

    def active(self, model: str) -> Rollout | None:
        rollout_id = self.client.get(self.keys.active_rollout(model))
        return self.get(replies.text(rollout_id)) if rollout_id else None

    def devices(self) -> list[str]:
        """Devices of the fleet seen recently enough to be put in a ring."""
        since = self.clock() - self.device_stale_s
        return replies.members(self.client.zrangebyscore(self.keys.devices, since, "+inf"))

    def statuses(self, devices: list[str]) -> dict[str, EdgeStatus | None]:
        if not devices:
            return {}
        raws, refused = verified_statuses(self.client, self.keys, devices, self.device_keys)
        for device, why in refused.items():
            self.refused_statuses[why.split(":")[0]] += 1
            logger.warning("rollout gate: ignoring the status of %s: %s", device, why)
        out: dict[str, EdgeStatus | None] = {}
        for device, raw in raws.items():
            try:
                out[device] = EdgeStatus.from_wire(raw) if raw else None
            except MessageError:
                out[device] = None
        return out

    def serving(self, devices: list[str], model: str) -> dict[str, ModelServing | None]:
        """Each device's report on ``model`` (None: offline, or it does not serve ``model``):
        an edge serving several models is judged on the rollout's only."""
        return {d: s.serving(model) if s else None for d, s in self.statuses(devices).items()}

    def pins(self, model: str) -> dict[str, str]:
        """Pinned devices and their versions. With a director, only pins it signed (the
        device's own order names the pinned version): a pin written to Redis by anyone
        else neither keeps a device out of a rollout nor gets signed."""
        raw = self.client.hgetall(self.keys.pins(model))
        pins = {replies.text(device): replies.text(sha) for device, sha in raw.items()}
        if self.director is None or not pins:
            return pins
        ordered = self.director.some(model, list(pins)).devices
        return {d: sha for d, sha in pins.items() if d in ordered and ordered[d].sha256 == sha}

    def target(self, model: str) -> str | None:
        """The fleet's version of ``model``: with a director, what its signed fleet order
        names (a trainer's unsigned ``target`` write, release ``direct``, is no decision)."""
        if self.director is not None:
            return self.director.fleet_sha(model)
        raw = self.client.get(self.keys.target(model))
        return replies.text(raw) if raw else None

    def renew_orders(self) -> int:
        """Re-sign director orders that are past half their lifetime (the loop's duty)."""
        return self.director.renew_due() if self.director is not None else 0

    # -- creating -------------------------------------------------------------

    def create(self, spec: RolloutSpec, by: str = "operator") -> Rollout:
        """Start moving ``spec.model`` from its current target to ``spec.target``."""
        to = self.versions.get(spec.model, spec.target)
        from_sha = self.target(spec.model)
        if from_sha == to.sha256:
            raise RolloutConflict(f"{spec.model} v{to.version} is already the fleet's target")
        from_version = self.versions.get(spec.model, from_sha).version if from_sha else None
        pool = self._pool(spec)
        rings = members(spec.stages, pool)
        rollout = Rollout(
            id=uuid.uuid4().hex[:12],
            fleet=self.keys.fleet,
            model=spec.model,
            from_version=from_version,
            from_sha256=from_sha,
            to_version=to.version,
            to_sha256=to.sha256,
            auto_promote=spec.auto_promote,
            gate=spec.gate,
            device_filter=spec.devices,
            stages=[
                StageState(name=s.name, devices=ring)
                for s, ring in zip(spec.stages, rings, strict=True)
            ],
        )
        rollout.log(f"created: v{from_version} -> v{to.version} over {len(pool)} devices", by)
        self._store_new(rollout)
        logger.info("rollout %s created by %s: %s", rollout.id, by, rollout.events[-1].what)
        self.step_one(rollout.id)
        return self.get(rollout.id)

    def _pool(self, spec: RolloutSpec) -> list[str]:
        """The devices a new rollout's rings are drawn from: seen recently, not pinned,
        and among ``spec.devices`` when it names some."""
        pinned = set(self.pins(spec.model))
        pool = [d for d in self.devices() if d not in pinned]
        if spec.devices is not None:
            wanted = set(spec.devices)
            pool = [d for d in pool if d in wanted]
        # Devices that report serving other models only are not this rollout's.
        statuses = self.statuses(pool)
        pool = [d for d, st in statuses.items() if st is None or st.serving(spec.model) is not None]
        if not pool:
            raise InputError(
                f"no device to roll out {spec.model} to (none that serves it seen recently, "
                "or all pinned)"
            )
        return pool

    def _store_new(self, rollout: Rollout) -> None:
        """Store a new rollout as its model's active one, unless another one is."""
        key = self.keys.rollout(rollout.id)
        pipe = self.client.pipeline()
        pipe.set(self.keys.active_rollout(rollout.model), rollout.id, nx=True)
        pipe.set(key, rollout.to_wire())
        pipe.zadd(self.keys.rollouts, {rollout.id: rollout.created_at})
        if not pipe.execute()[0]:
            self.client.delete(key)
            self.client.zrem(self.keys.rollouts, rollout.id)
            other = self.client.get(self.keys.active_rollout(rollout.model))
            raise RolloutConflict(
                f"rollout {replies.text(other) if other else '?'} of {rollout.model} is in progress; "
                "finish, abort or roll it back first"
            )

    # -- running --------------------------------------------------------------

    def step(self) -> None:
        """Advance every rollout in progress; safe to call from several processes."""
        for rid in self._recent_ids(100):
            try:
                if self.get(rid).state == "running":
                    self.step_one(rid)
            except (RolloutNotFound, MessageError) as e:
                logger.warning("skipping rollout %s: %s", rid, e)

    def step_one(self, rollout_id: str) -> Rollout:
        return self._change(rollout_id, self._advance, by="controller")

    def _advance(self, r: Rollout, tx: _Tx, by: str) -> None:
        if r.state != "running":
            return
        stage = r.stages[r.current]
        now = self.clock()
        if stage.status == "pending":
            self._start_stage(r, stage, tx, now)
            return
        a, b = self.book.advance(tx.pipe, r)
        result = evaluate(stage, a, b, r.gate, now)
        stage.gate = {"decision": result.decision, "reasons": result.reasons, **result.figures}
        if result.decision == "fail":
            stage.status, stage.decided_at = "failed", now
            self._roll_back(
                r,
                tx,
                f"stage {stage.name} failed: {'; '.join(result.reasons)}",
                by,
                "rolled_back",
            )
        elif result.decision == "pass":
            stage.status, stage.decided_at = "passed", now
            r.log(f"stage {stage.name} passed", by)
            self._after_pass(r, tx, by)

    def _start_stage(self, r: Rollout, stage: StageState, tx: _Tx, now: float) -> None:
        pinned = set(self.pins(r.model))
        stage.devices = [d for d in stage.devices if d not in pinned]
        self.book.start(tx.pipe, r, r.current)
        stage.status, stage.started_at = "running", now
        if stage.devices:
            # a version whose payloads were collected is fetchable again (cloud/registry/collect.py)
            self.versions.queue_artifact(tx.pipe, r.to_sha256)
            tx.pipe.hset(
                self.keys.assignments(r.model), mapping=dict.fromkeys(stage.devices, r.to_sha256)
            )
        tx.devices.update(dict.fromkeys(stage.devices, r.to_sha256))
        self._notify(tx.pipe, r.model, stage.devices)
        r.log(f"stage {stage.name}: v{r.to_version} assigned to {len(stage.devices)} devices")

    def _after_pass(self, r: Rollout, tx: _Tx, by: str) -> None:
        if r.current == len(r.stages) - 1:
            self._complete(r, tx, by)
        elif r.auto_promote:
            r.current += 1
        else:
            r.state = "waiting"
            r.log("waiting for an operator to promote", by)

    def _complete(self, r: Rollout, tx: _Tx, by: str) -> None:
        tx.pipe.set(self.keys.target(r.model), r.to_sha256)
        tx.fleet = r.to_sha256
        self._release(r, tx)
        r.state = "completed"
        r.log(f"completed: v{r.to_version} is the fleet's target", by)

    def _roll_back(self, r: Rollout, tx: _Tx, reason: str, by: str, state: RolloutState) -> None:
        self._release(r, tx)
        r.state = state
        r.reason = reason
        r.log(f"{state.replace('_', ' ')}: {reason}", by)
        logger.warning("rollout %s %s: %s", r.id, state, reason)

    def _release(self, r: Rollout, tx: _Tx) -> None:
        """Drop this rollout's assignments: its devices follow the target again."""
        devices = sorted({d for s in r.stages for d in s.devices})
        if devices:
            tx.pipe.hdel(self.keys.assignments(r.model), *devices)
        pinned = self.pins(r.model) if self.director is not None else {}
        tx.devices.update({d: pinned.get(d) for d in devices})  # a pin outlives the rollout
        tx.pipe.delete(self.keys.active_rollout(r.model))
        self.book.close(tx.pipe, r)
        self._notify(tx.pipe, r.model, devices)

    def _notify(self, pipe: Pipeline, model: str, devices: list[str]) -> None:
        """Tell edges to look at their desired version again."""
        notice = AssignmentNotice(model=model, devices=devices)
        pipe.xadd(
            self.keys.deltas,
            {"assign": notice.to_wire()},
            maxlen=DELTAS_MAXLEN,
            approximate=True,
        )

    # -- operator actions -----------------------------------------------------

    def pause(self, rollout_id: str, by: str) -> Rollout:
        """Hold the rollout where it is: devices keep what they were assigned."""
        allowed = {"running", "waiting"}
        return self._change(
            rollout_id, lambda r, p, b: self._set_state(r, b, "pause", "paused", allowed), by
        )

    def resume(self, rollout_id: str, by: str) -> Rollout:
        allowed = {"paused"}
        return self._change(
            rollout_id, lambda r, p, b: self._set_state(r, b, "resume", "running", allowed), by
        )

    def promote(self, rollout_id: str, by: str) -> Rollout:
        """Pass the current stage by hand (its gate notwithstanding)."""

        def act(r: Rollout, tx: _Tx, by: str) -> None:
            self._require(r, {"running", "waiting", "paused"}, "promote")
            stage = r.stages[r.current]
            if stage.status != "passed":
                if stage.status == "pending":
                    self._start_stage(r, stage, tx, self.clock())
                stage.status, stage.decided_at = "passed", self.clock()
                r.log(f"stage {stage.name} promoted by hand", by)
            if r.current == len(r.stages) - 1:
                self._complete(r, tx, by)
            else:
                r.current += 1
                r.state = "running"
                r.log(f"moving on to stage {r.stages[r.current].name}", by)

        return self._change(rollout_id, act, by)

    def abort(self, rollout_id: str, by: str) -> Rollout:
        return self._change(rollout_id, lambda r, t, b: self._stop(r, t, b, "aborted"), by)

    def rollback(self, rollout_id: str, by: str) -> Rollout:
        return self._change(rollout_id, lambda r, t, b: self._stop(r, t, b, "rolled_back"), by)

    def _stop(self, r: Rollout, tx: _Tx, by: str, state: _Stopped) -> None:
        if r.state == "completed" and state == "rolled_back":
            # Rolling back a finished rollout moves the target back to A.
            if r.from_sha256 is None:
                raise RolloutConflict("this rollout had no previous version to go back to")
            tx.pipe.set(self.keys.target(r.model), r.from_sha256)
            tx.fleet = r.from_sha256  # a new, higher-counter order naming the older version
            self._notify(tx.pipe, r.model, [])
            r.state, r.reason = "rolled_back", f"rolled back by {by} after completion"
            r.log(r.reason, by)
            return
        self._require(r, {"running", "waiting", "paused"}, state.replace("_", " "))
        self._roll_back(r, tx, f"{state.replace('_', ' ')} by {by}", by, state)

    def _set_state(
        self, r: Rollout, by: str, action: str, state: RolloutState, allowed: set[str]
    ) -> None:
        self._require(r, allowed, action)
        r.state = state
        r.log(f"{action}d", by)

    @staticmethod
    def _require(r: Rollout, allowed: set[str], action: str) -> None:
        if r.state not in allowed:
            raise RolloutConflict(
                f"cannot {action} rollout {r.id}: it is {r.state.replace('_', ' ')}"
            )

    # -- pins -----------------------------------------------------------------

    def pin(self, model: str, device: str, ref: str, by: str) -> VersionRecord:
        check_name("device id", device)
        record = self.versions.get(model, ref)

        def write(tx: _Tx) -> None:
            self.versions.queue_artifact(tx.pipe, record.sha256)  # see cloud/registry/collect.py
            tx.pipe.hset(self.keys.pins(model), device, record.sha256)
            tx.devices[device] = record.sha256
            self._notify(tx.pipe, model, [device])

        self._change_model(model, write)
        logger.info("%s pinned %s to %s v%d", by, device, model, record.version)
        return record

    def unpin(self, model: str, device: str, by: str) -> bool:
        # Unpinned, the device serves its rollout assignment if it has one, else the target.
        assigned = self.client.hget(self.keys.assignments(model), device)

        def write(tx: _Tx) -> None:
            tx.pipe.hdel(self.keys.pins(model), device)
            tx.devices[device] = replies.text(assigned) if assigned else None
            self._notify(tx.pipe, model, [device])

        removed = bool(self._change_model(model, write)[0])
        if removed:
            logger.info("%s unpinned %s", by, device)
        return removed

    # -- the one way state changes -------------------------------------------

    def _change(self, rollout_id: str, fn: Callable[[Rollout, _Tx, str], None], by: str) -> Rollout:
        key = self.keys.rollout(rollout_id)
        out: dict[str, Rollout] = {}
        commit: dict[str, Orders | None] = {}

        def txn(pipe: Pipeline) -> None:
            raw = pipe.get(key)
            if raw is None:
                raise RolloutNotFound(f"no rollout {rollout_id!r} in fleet {self.keys.fleet}")
            r = Rollout.from_wire(raw)
            orders = self.director.watch(pipe, r.model) if self.director else None
            pipe.multi()
            tx = _Tx(pipe)
            fn(r, tx, by)
            r.updated_at = self.clock()
            pipe.set(key, r.to_wire())
            self._sign(tx, orders)
            out["r"], commit["orders"] = r, orders

        self.client.transaction(txn, key)
        self._committed(commit.get("orders"))
        return out["r"]

    def _change_model(self, model: str, fn: Callable[[_Tx], None]) -> list[object]:
        """``fn``'s writes for ``model`` and the director's orders for them, in one
        transaction; the replies of the writes."""
        commit: dict[str, Orders | None] = {}

        def txn(pipe: Pipeline) -> None:
            orders = self.director.watch(pipe, model) if self.director else None
            pipe.multi()
            tx = _Tx(pipe)
            fn(tx)
            self._sign(tx, orders)
            commit["orders"] = orders

        replies_ = self.client.transaction(txn)
        self._committed(commit.get("orders"))
        return list(replies_ or [])

    def _sign(self, tx: _Tx, orders: Orders | None) -> None:
        if self.director is not None and orders is not None:
            self.director.write(tx.pipe, orders, fleet=tx.fleet, devices=tx.devices)

    def _committed(self, orders: Orders | None) -> None:
        if self.director is not None and orders is not None:
            self.director.committed(orders)
