"""The edge's side of director orders (shared/director.py): verify, never go back.

``DirectorGate.read`` returns the order this device follows for its model: its
own (``device:<id>``) or the fleet's, whichever verifies against a trusted
director key and has the higher counter. The highest counter ever accepted is
kept in ``state_dir`` (written before the order is acted on), so a replayed
older order, even after a restart, is refused. An expired order sets ``stale``
and is not followed for a change; the edge keeps serving what it has.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import cast

import redis

from shared.director import (
    FLEET_SCOPE,
    DirectorOrder,
    OrderRefused,
    SignedOrder,
    device_scope,
    verify_order,
)
from shared.errors import EdgeloopError
from shared.keys import FleetKeys
from shared.signing import Verifier

logger = logging.getLogger(__name__)

__all__ = ["DirectorGate"]


class DirectorGate:
    def __init__(
        self,
        keys: FleetKeys,
        model: str,
        device_id: str,
        trusted: list[Verifier],
        state_file: Path,
    ) -> None:
        self.keys, self.model, self.device_id = keys, model, device_id
        self.trusted = trusted
        self.state_file = Path(state_file)
        self.stale = False
        self.refused = 0
        self.last_refusal: str | None = None  # why the last order was refused
        self.highest = self._load()

    def _load(self) -> int:
        try:
            return int(self.state_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _keep(self, counter: int) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(str(counter))
        os.replace(tmp, self.state_file)
        self.highest = counter

    def read(self, client: redis.Redis, now: float | None = None) -> DirectorOrder | None:
        """The order to follow, or None when there is none (or none may be followed).
        OrderRefused when the newest order is a replay (lower counter than seen)."""
        scopes = [device_scope(self.device_id), FLEET_SCOPE]
        raws = cast(list[bytes | None], client.hmget(self.keys.director(self.model), scopes))
        return self.choose(raws[0], raws[1], now)

    def choose(
        self, device_order: bytes | None, fleet_order: bytes | None, now: float | None = None
    ) -> DirectorOrder | None:
        """``read``'s judgement of the device's and the fleet's order as stored (read from
        Redis, or from the cloud API by an edge without Redis)."""
        now = time.time() if now is None else now
        scopes = (device_scope(self.device_id), FLEET_SCOPE)
        raws = (device_order, fleet_order)
        valid: list[DirectorOrder] = []
        for scope, raw in zip(scopes, raws, strict=True):
            if raw is None:
                continue
            try:
                order = verify_order(SignedOrder.from_wire(raw), self.trusted)
                if (order.fleet, order.model, order.scope) != (self.keys.fleet, self.model, scope):
                    raise OrderRefused(
                        f"order for {order.fleet}/{order.model}/{order.scope} "
                        f"stored as {self.keys.fleet}/{self.model}/{scope}"
                    )
            except EdgeloopError as e:
                self.refused += 1
                self.last_refusal = f"the {scope} order: {e}"
                logger.error("director: refused the %s order: %s", scope, e)
                continue
            valid.append(order)
        if not valid:
            return None
        best = max(valid, key=lambda o: (o.counter, o.scope != FLEET_SCOPE))
        if best.counter < self.highest:
            self.refused += 1
            raise OrderRefused(
                f"director order counter {best.counter} is below {self.highest}, "
                "the highest this edge has accepted (a replayed order)"
            )
        if best.expired(now):
            self.stale = True
            return None
        self.stale = False
        if best.counter > self.highest:
            self._keep(best.counter)
        return best
