"""The director: the rollout controller signs what each device or the fleet serves.

See shared/director.py for the order and what an edge does with it. The key is
the controller's (``director_key``), never the trainer's: a trainer key alone
can add versions to the TUF targets but cannot make any device serve one.

The orders of a model mirror the controller's decisions: the fleet's order
names the target, a device's own order its pin or its rollout assignment. An
edge follows whichever of its two orders has the higher counter, so the
invariant kept here is: **every device order has a higher counter than the
fleet order**. Hence:

- a new device order (a stage's assignment, a pin) is one order;
- a device going back to the fleet's version (a rollback, an unpin, a rollout
  completing) cannot just lose its order: the edge would then see the fleet
  order's lower counter and refuse it as a replay. Its order is deleted *and*
  the fleet order re-signed above it, and then every remaining device order
  above that;
- a change of the fleet's version likewise re-signs the remaining device
  orders after it.

Every change is one WATCH/MULTI on the model's orders and the counters, so an
edge never reads half of one (a pinned device never sees a new fleet order
without its own above it), and two controllers never sign one counter twice.
``renew`` re-signs everything (the same versions, new counters and expiry)
before the earliest order expires.

The current orders are read back from Redis and verified with the director's
own key: what does not verify is deleted on the next write, and so is a device
order below the fleet order's counter (withdrawn, then put back: signing it
again would make the device follow it). An older order of this director put
back in place of a newer one (a replay) is caught by the newest orders this
director has seen, and the newer one is restored. Those are kept in
``state_file`` (the API setting ``director_state``) so that this holds across a
restart; without it a restarted controller takes Redis as it finds it (the
edges still refuse an older order, but a renewal would sign it anew).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import redis
from redis.client import Pipeline

from shared.director import (
    FLEET_SCOPE,
    DirectorOrder,
    SignedOrder,
    device_scope,
    sign_order,
    verify_order,
)
from shared.errors import ConfigError, EdgeloopError
from shared.keys import FleetKeys
from shared.signing import Signer, Verifier

logger = logging.getLogger(__name__)

__all__ = ["ORDER_TTL_S", "Director", "Orders", "director_of"]

#: Lifetime of an order: an edge that sees no renewal for this long reports ``stale``.
ORDER_TTL_S = 24 * 3600.0


def director_of(
    client: redis.Redis,
    keys: FleetKeys,
    key_file: Path | None,
    ttl_s: float = ORDER_TTL_S,
    state_file: Path | None = None,
) -> Director | None:
    """The director of a process given ``director_key``; None without one (development)."""
    if key_file is None:
        return None
    return Director(client, keys, Signer.from_file(key_file), ttl_s, state_file=state_file)


@dataclass
class Orders:
    """The director's verified orders of one model, as read at the start of a change."""

    model: str
    fleet: DirectorOrder | None = None
    devices: dict[str, DirectorOrder] = field(default_factory=dict)
    #: The model's highest counter (the counter hash or an order, whichever is higher).
    top: int = 0
    #: Fields that do not verify or do not parse: deleted by the next write.
    junk: list[str] = field(default_factory=list)
    #: An older order of this director was found in place of a newer one.
    replayed: bool = False
    #: What ``write`` signed: remembered by ``committed`` once the transaction is done.
    written: dict[str, tuple[DirectorOrder, bytes]] = field(default_factory=dict)

    @property
    def fleet_sha(self) -> str | None:
        return self.fleet.sha256 if self.fleet else None

    def sha_of(self, device: str) -> str | None:
        """What ``device`` is ordered to serve: its own order, else the fleet's."""
        own = self.devices.get(device)
        return own.sha256 if own else self.fleet_sha

    def earliest_expiry(self) -> float | None:
        orders = [*self.devices.values(), *([self.fleet] if self.fleet else [])]
        return min((o.expires for o in orders), default=None)


class Director:
    """Signs and stores the orders of one fleet with the controller's director key."""

    def __init__(
        self,
        client: redis.Redis,
        keys: FleetKeys,
        signer: Signer,
        ttl_s: float = ORDER_TTL_S,
        *,
        state_file: Path | None = None,
    ) -> None:
        self.client, self.keys, self.signer, self.ttl_s = client, keys, signer, ttl_s
        self._verifier = Verifier(signer.public_pem())
        #: The newest order seen per (model, scope): a replay's defence. Kept in
        #: ``state_file`` when given, so that it outlives a restart.
        self._seen: dict[tuple[str, str], tuple[DirectorOrder, bytes]] = {}
        self._state_file = state_file
        self._state_lock = threading.Lock()
        self.replays = 0
        self._load_state()

    def _load_state(self) -> None:
        if self._state_file is None or not self._state_file.exists():
            return
        try:
            saved = json.loads(self._state_file.read_text())
            for model, scopes in saved.items():
                for scope, wire in scopes.items():
                    value = wire.encode()
                    order = verify_order(SignedOrder.from_wire(value), [self._verifier])
                    self._seen[(model, scope)] = (order, value)
        except (OSError, ValueError, AttributeError, EdgeloopError) as e:
            raise ConfigError(
                f"director state {self._state_file} does not load ({e}); it holds the "
                "newest orders this controller signed: restore it, or move it away to start "
                "afresh from what Redis holds"
            ) from e

    def _save_state(self) -> None:
        if self._state_file is None:
            return
        saved: dict[str, dict[str, str]] = {}
        for (model, scope), (_, value) in list(self._seen.items()):
            saved.setdefault(model, {})[scope] = value.decode()
        with self._state_lock:
            tmp = self._state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(saved))
            os.replace(tmp, self._state_file)

    # -- reading -----------------------------------------------------------------

    def watch(self, pipe: Pipeline, model: str) -> Orders:
        """WATCH and read ``model``'s orders on ``pipe`` (before its ``multi()``)."""
        pipe.watch(self.keys.director(model), self.keys.director_counter)  # type: ignore[no-untyped-call]
        raw = cast(dict[bytes, bytes], pipe.hgetall(self.keys.director(model)))
        top = pipe.hget(self.keys.director_counter, model)
        return self._parse(model, raw, int(top or 0))

    def current(self, model: str) -> Orders:
        """``model``'s orders now (no WATCH)."""
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.keys.director(model)))
        top = cast(bytes | None, self.client.hget(self.keys.director_counter, model))
        return self._parse(model, raw, int(top or 0))

    def some(self, model: str, devices: list[str]) -> Orders:
        """The fleet's order and those of ``devices`` only (no WATCH): what a read needs,
        without verifying every device order of a large stage."""
        scopes = [FLEET_SCOPE, *(device_scope(d) for d in devices)]
        values = cast(list[bytes | None], self.client.hmget(self.keys.director(model), scopes))
        raw = {s.encode(): v for s, v in zip(scopes, values, strict=True) if v is not None}
        return self._parse(model, raw, 0)

    def fleet_sha(self, model: str) -> str | None:
        """The version the fleet's signed order names (None without one)."""
        return self.some(model, []).fleet_sha

    def models(self) -> list[str]:
        """Models this fleet's director has ever ordered."""
        names = cast(list[bytes], self.client.hkeys(self.keys.director_counter))
        return sorted(n.decode() for n in names)

    def _parse(self, model: str, raw: dict[bytes, bytes], top: int) -> Orders:
        out = Orders(model=model, top=top)
        learned = False
        for field_, value in raw.items():
            scope = field_.decode(errors="replace")
            try:
                order = verify_order(SignedOrder.from_wire(value), [self._verifier])
                if (order.fleet, order.model, order.scope) != (self.keys.fleet, model, scope):
                    raise EdgeloopError(f"order for {order.fleet}/{order.model}/{order.scope}")
            except EdgeloopError as e:
                logger.warning("director: dropping the %s order of %s: %s", scope, model, e)
                out.junk.append(scope)
                continue
            seen = self._seen.get((model, scope))
            if seen is not None and order.counter < seen[0].counter:
                self.replays += 1
                out.replayed = True
                logger.error(
                    "director: the %s order of %s has counter %d, below %d that this "
                    "director signed: a replayed order; restoring the newer one",
                    scope,
                    model,
                    order.counter,
                    seen[0].counter,
                )
                order = seen[0]
            elif seen is None or order.counter > seen[0].counter:
                self._seen[(model, scope)] = (order, value)
                learned = True
            out.top = max(out.top, order.counter)
            if scope == FLEET_SCOPE:
                out.fleet = order
            else:
                out.devices[scope.removeprefix("device:")] = order
        if out.fleet is not None:
            # Every live device order is above the fleet order (see the module's
            # docstring); one below it was withdrawn and put back (a replay). Signing it
            # again would make the edge follow it: it is deleted instead.
            for device, order in list(out.devices.items()):
                if order.counter < out.fleet.counter:
                    logger.error(
                        "director: the order of %s for %s (counter %d) is older than the "
                        "fleet's (%d): a withdrawn order put back; deleting it",
                        device,
                        model,
                        order.counter,
                        out.fleet.counter,
                    )
                    self.replays += 1
                    out.junk.append(device_scope(device))
                    del out.devices[device]
        if learned:  # another controller signed something since: remember it too
            self._save_state()
        return out

    # -- writing -----------------------------------------------------------------

    def write(
        self,
        pipe: Pipeline,
        orders: Orders,
        *,
        fleet: str | None = None,
        devices: Mapping[str, str | None] | None = None,
        renew: bool = False,
    ) -> int:
        """Queue on ``pipe`` (after its ``multi()``) the orders that make ``fleet`` the
        fleet's version (None: unchanged) and each of ``devices`` serve its version (None:
        the fleet's again). ``renew`` re-signs every order. Returns the orders signed."""
        new_fleet = fleet if fleet is not None else orders.fleet_sha
        wanted = {d: o.sha256 for d, o in orders.devices.items()}
        for device, sha in (devices or {}).items():
            if sha is None:
                wanted.pop(device, None)
            else:
                wanted[device] = sha
        dropped = [d for d in orders.devices if d not in wanted]
        if new_fleet is None and dropped:
            # No fleet order to go back to (a first rollout rolled back): an order cannot
            # be withdrawn, so these devices keep theirs.
            logger.warning(
                "director: %s has no fleet order; %d devices keep their own",
                orders.model,
                len(dropped),
            )
            for d in dropped:
                wanted[d] = orders.devices[d].sha256
            dropped = []
        floor = orders.fleet.counter if orders.fleet else 0
        reissue_fleet = new_fleet is not None and (
            renew
            or orders.replayed
            or orders.fleet is None
            or orders.fleet.sha256 != new_fleet
            or any(orders.devices[d].counter > floor for d in dropped)
        )
        plan: list[tuple[str, str]] = []
        if reissue_fleet:
            assert new_fleet is not None
            plan.append((FLEET_SCOPE, new_fleet))
            plan += [(device_scope(d), sha) for d, sha in sorted(wanted.items())]
        else:
            for d, sha in sorted(wanted.items()):
                old = orders.devices.get(d)
                if (
                    renew
                    or orders.replayed
                    or old is None
                    or old.sha256 != sha
                    or old.counter <= floor
                ):
                    plan.append((device_scope(d), sha))
        remove = [device_scope(d) for d in dropped] + orders.junk
        if remove:
            pipe.hdel(self.keys.director(orders.model), *remove)
        if not plan:
            return 0
        expires = time.time() + self.ttl_s
        signed: dict[str, bytes] = {}
        for i, (scope, sha) in enumerate(plan, start=orders.top + 1):
            order = DirectorOrder(
                fleet=self.keys.fleet,
                model=orders.model,
                scope=scope,
                sha256=sha,
                counter=i,
                expires=expires,
            )
            signed[scope] = sign_order(self.signer, order).to_wire()
            orders.written[scope] = (order, signed[scope])
        pipe.hset(self.keys.director(orders.model), mapping=signed)  # type: ignore[arg-type]
        pipe.hset(self.keys.director_counter, orders.model, orders.top + len(plan))
        return len(plan)

    def committed(self, orders: Orders) -> None:
        """Remember what a committed ``write`` signed: an older order is a replay from now on."""
        for scope, seen in orders.written.items():
            self._seen[(orders.model, scope)] = seen
        if orders.written:
            self._save_state()

    def set(
        self,
        model: str,
        *,
        fleet: str | None = None,
        devices: Mapping[str, str | None] | None = None,
        renew: bool = False,
    ) -> int:
        """``write`` in a transaction of its own; the number of orders signed."""
        done: list[tuple[Orders, int]] = []

        def txn(pipe: Pipeline) -> None:
            orders = self.watch(pipe, model)
            pipe.multi()
            done[:] = [
                (orders, self.write(pipe, orders, fleet=fleet, devices=devices, renew=renew))
            ]

        self.client.transaction(txn)
        self.committed(done[0][0])
        return done[0][1]

    def order(self, model: str, sha256: str, scope: str = FLEET_SCOPE) -> SignedOrder:
        """Order ``scope`` (the fleet or ``device:<id>``) to serve ``sha256``; the order."""
        if scope == FLEET_SCOPE:
            self.set(model, fleet=sha256)
        else:
            self.set(model, devices={scope.removeprefix("device:"): sha256})
        raw = self.client.hget(self.keys.director(model), scope)
        assert raw is not None
        return SignedOrder.from_wire(cast(bytes, raw))

    def renew(self, model: str) -> int:
        """Re-sign every order of ``model`` (same versions, new counters and expiry)."""
        return self.set(model, renew=True)

    def renew_due(self, now: float | None = None) -> int:
        """Renew each model whose earliest order is past half its lifetime (or was
        replayed); the number of orders signed. The controller's loop calls this."""
        now = time.time() if now is None else now
        signed = 0
        for model in self.models():
            orders = self.current(model)
            earliest = orders.earliest_expiry()
            due = earliest is not None and earliest - now < self.ttl_s / 2
            if due or orders.replayed or orders.junk:
                signed += self.renew(model)
        if signed:
            logger.info("director: renewed %d orders", signed)
        return signed
