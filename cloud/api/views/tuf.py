"""What an edge without Redis reads to update itself: the fleet's TUF metadata and target
files, and the director's orders for one device, each exactly as it is stored in Redis.

Nothing here is trusted by the edge because the API says so: the metadata and orders are
signed, the target files are listed with their length and hashes in the signed targets, and
the edge's ngclient Updater and director gate verify them as they do when they read Redis
(``edge/tuf_client.py``, ``edge/director.py``). The API only maps names to keys
(``shared/tuf_paths.py``, the same map the Redis fetcher uses) and refuses every other name.
"""

from __future__ import annotations

from typing import cast

import redis

from cloud.api.schemas import DirectorOrdersPublic
from shared import replies
from shared.director import FLEET_SCOPE, device_scope
from shared.errors import IntegrityError, NotFound
from shared.keys import FleetKeys
from shared.tuf_paths import metadata_key, target_key


class TufView:
    """One fleet's TUF repository and director orders, read-only."""

    def __init__(self, client: redis.Redis, keys: FleetKeys) -> None:
        self.client, self.keys = client, keys

    def metadata(self, name: str) -> bytes:
        """Metadata file ``name`` (``root.json``, ``3.root.json``, ``timestamp.json``, ...).
        NotFound for a file the repository does not hold (how ngclient learns where the
        root chain ends) or any other name."""
        try:
            key = metadata_key(self.keys, name)
        except IntegrityError as e:
            raise NotFound(str(e)) from e
        return self._read(key, f"metadata {name}")

    def target(self, path: str) -> bytes:
        """Target file ``path`` (``artifacts/<sha256>``, ``patches/<base>/<sha256>``)."""
        try:
            key = target_key(self.keys, path)
        except IntegrityError as e:
            raise NotFound(str(e)) from e
        return self._read(key, f"target {path}")

    def _read(self, key: str, what: str) -> bytes:
        try:
            value = self.client.get(key)
        except redis.ResponseError as e:  # another type: not a file of the repository
            raise NotFound(f"{what} is not in fleet {self.keys.fleet}'s repository") from e
        if value is None:
            raise NotFound(f"{what} is not in fleet {self.keys.fleet}'s repository")
        return cast(bytes, value)

    def orders(self, model: str, device_id: str) -> DirectorOrdersPublic:
        """The orders and unsigned values that decide what ``device_id`` serves of ``model``."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.keys.director(model), [device_scope(device_id), FLEET_SCOPE])
        pipe.get(self.keys.target(model))
        pipe.hget(self.keys.assignments(model), device_id)
        pipe.hget(self.keys.pins(model), device_id)
        (device_order, fleet_order), target, assignment, pin = pipe.execute()
        return DirectorOrdersPublic(
            model=model,
            device_id=device_id,
            device_order=replies.optional_text(device_order),
            fleet_order=replies.optional_text(fleet_order),
            target=replies.optional_text(target),
            assignment=replies.optional_text(assignment),
            pin=replies.optional_text(pin),
        )
