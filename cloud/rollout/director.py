"""The director: the rollout controller signs what each device or the fleet serves.

See shared/director.py for the order and what an edge does with it. The key is
the controller's (``director_key``), never the trainer's: a trainer key alone
can add versions to the TUF targets but cannot make any device serve one.
Every order takes the next counter of its model (HINCRBY, atomic across
controllers), so a rollback is a new order with a higher counter naming an
older version; ``renew`` re-signs the current orders before they expire.
"""

from __future__ import annotations

import time
from typing import cast

import redis

from shared.director import FLEET_SCOPE, DirectorOrder, SignedOrder, sign_order
from shared.keys import FleetKeys
from shared.signing import Signer

__all__ = ["ORDER_TTL_S", "Director"]

#: Lifetime of an order: an edge that sees no renewal for this long reports ``stale``.
ORDER_TTL_S = 24 * 3600.0


class Director:
    def __init__(
        self, client: redis.Redis, keys: FleetKeys, signer: Signer, ttl_s: float = ORDER_TTL_S
    ) -> None:
        self.client, self.keys, self.signer, self.ttl_s = client, keys, signer, ttl_s

    def order(self, model: str, sha256: str, scope: str = FLEET_SCOPE) -> SignedOrder:
        """Sign and store an order: ``scope`` serves ``sha256`` of ``model`` from now on."""
        counter = int(self.client.hincrby(self.keys.director_counter, model, 1))  # type: ignore[arg-type]
        order = DirectorOrder(
            fleet=self.keys.fleet,
            model=model,
            scope=scope,
            sha256=sha256,
            counter=counter,
            expires=time.time() + self.ttl_s,
        )
        signed = sign_order(self.signer, order)
        self.client.hset(self.keys.director(model), scope, signed.to_wire())
        return signed

    def renew(self, model: str) -> int:
        """Re-sign every stored order of ``model`` (same version, new counter and expiry)."""
        stored = cast(dict[bytes, bytes], self.client.hgetall(self.keys.director(model)))
        for scope, raw in stored.items():
            current = SignedOrder.from_wire(raw).order()
            self.order(model, current.sha256, scope.decode())
        return len(stored)
