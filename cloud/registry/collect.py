"""Collecting old versions' payloads from Redis: what edges fetch, kept only while wanted.

Each published version leaves in Redis its zstd file (``artifact(sha)``), the
float weights it was exported from (``weights(sha)``) and the patches to it from
the bases its announcement chose (``patch(base, sha)``): 100-200 KB a version for
the digits model. A trainer that publishes a round a minute would grow Redis by
that much a minute forever. ``VersionCollector`` removes them for every version
that no one can be told to install and that nothing else needs:

- kept: the last ``keep_last`` versions of each model (the newest are what edges
  without a desired version follow, from the announcements), every labelled
  version (``latest``, ``stable``, ...), the fleet's target, every rollout
  assignment and pin, the active rollout's from- and to-versions (a rollback goes
  back to the first), and every version a device reports serving (the fleet
  counts' ``mv:<model>|v<n>`` buckets: ``cloud/registry/fleet_counts.py``; no
  device is read);
- collected: the artifact, the weights, every patch to or from the version, and
  the manifest (archived, below).

The signed manifest (40 KB for the digits model: its probe set and exemplars)
moves to the registry's blob store (on disk), named in ``manifest_archive``
(version -> blob): the registry still lists, explains and verifies every version
(``Registry.manifest_bytes`` reads either place), and a manifest cannot be signed
again without the key. What stays in Redis: the version's record and number.
Only a version whose TFLite file is in the blob store is collected, since that is
where it comes back from when an operator pins it or a rollout assigns it
(``Registry.queue_artifact``: artifact and manifest, in the transaction that
writes the pin or the assignment). The trainer only ever fine-tunes from the
latest version's weights.

Safety against a concurrent pin or rollout: the collection reads the kept set and
deletes in one WATCH/MULTI on the keys that name versions to install (labels,
target, assignments, pins, active rollout); a pin or assignment written between
the read and the EXEC aborts it (redis-py retries). One written after the EXEC
restores the artifact in its own transaction. Devices' served versions are read
without a WATCH (the counts change at every report): a device that served a
version has it already.

It runs in the rollout controller's loop (``ControllerLoop``), every
``interval_s``: the controller's Redis user may read pins and assignments,
which the trainer's may not.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloud.registry.versions import Registry
from shared import replies
from shared.keys import FleetKeys

logger = logging.getLogger(__name__)

#: Versions of each model whose payloads are always kept, newest first.
KEEP_LAST = 8
#: Rollout records kept, newest first: older finished ones are deleted.
KEEP_ROLLOUTS = 50


@dataclass
class Collected:
    """What one collection of a model removed."""

    model: str
    versions: list[str] = field(default_factory=list)  # sha256s whose payloads went
    keys: int = 0  # keys deleted
    archived: bool = False  # manifests were moved to the blob store


class CollectSettings(Protocol):
    """The settings a collector takes (the API's, which ``edgeloop controller`` reads too)."""

    keep_versions: int
    collect_interval_s: float
    keep_rollouts: int


class VersionCollector:
    """Deletes the Redis payloads of the versions of a fleet's models that nothing needs."""

    @classmethod
    def configured(cls, registry: Registry, settings: CollectSettings) -> VersionCollector:
        return cls(
            registry,
            keep_last=settings.keep_versions,
            interval_s=settings.collect_interval_s,
            keep_rollouts=settings.keep_rollouts,
        )

    def __init__(
        self,
        registry: Registry,
        *,
        keep_last: int = KEEP_LAST,
        interval_s: float = 60.0,
        keep_rollouts: int = KEEP_ROLLOUTS,
    ) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, not {keep_last}")
        self.registry = registry
        self.client = registry.client
        self.keys = registry.keys
        self.keep_last = keep_last
        self.interval_s = interval_s
        #: finished rollouts' records kept (the controller forgets older ones when this is due)
        self.keep_rollouts = keep_rollouts
        self._due = 0.0

    def due(self) -> bool:
        """Whether ``interval_s`` has passed since the last time this said so (negative:
        never); the controller loop collects versions and forgets old rollouts then."""
        if self.interval_s < 0 or time.monotonic() < self._due:
            return False
        self._due = time.monotonic() + self.interval_s
        return True

    def collect(self) -> list[Collected]:
        """Collect every model of the fleet; what each collection removed (if anything)."""
        models = sorted(replies.text(m) for m in self.client.smembers(self.keys.models))
        return [c for c in (self.collect_model(m) for m in models) if c.versions]

    def collect_model(self, model: str) -> Collected:
        k = self.keys
        watched = [k.labels(model), k.target(model), k.assignments(model), k.pins(model)]
        watched += [k.active_rollout(model), k.versions(model)]
        out = Collected(model)

        def txn(pipe: Any) -> None:
            shas = [replies.text(s) for s in pipe.zrange(k.versions(model), 0, -1)]
            keep = self._kept(pipe, model, shas)
            candidates = [s for s in shas if s not in keep]
            present = _present(pipe, k, candidates)
            # only a version whose file is in the blob store: it can be brought back
            doomed = [s for s in candidates if s in present and self.registry.blobs.has(s)]
            archived = self._archive(pipe, doomed)
            names = [key for s in doomed for key in self._payload_keys(s, shas)]
            names += [k.manifest(s) for s in archived]
            pipe.multi()
            if archived:
                pipe.hset(k.manifest_archive, mapping=archived)
            for i in range(0, len(names), 1000):
                pipe.unlink(*names[i : i + 1000])
            out.versions, out.archived = doomed, bool(archived)

        answers = self.client.transaction(txn, *watched)
        unlinks = list(answers or [])[1:] if out.archived else list(answers or [])
        out.keys = sum(int(n) for n in unlinks)
        if out.versions:
            logger.info(
                "%s: collected the payloads of %d old versions (%d keys)",
                model,
                len(out.versions),
                out.keys,
            )
        return out

    def _archive(self, pipe: Any, shas: list[str]) -> dict[str, str]:
        """Put the signed manifests of ``shas`` in the blob store; version -> the blob's name
        (the manifest is deleted from Redis only once its copy is written)."""
        out: dict[str, str] = {}
        for sha in shas:
            raw = pipe.get(self.keys.manifest(sha))
            if raw is not None:
                out[sha] = self.registry.blobs.put(replies.binary(raw))
        return out

    def _payload_keys(self, sha: str, shas: list[str]) -> list[str]:
        k = self.keys
        patches = [k.patch(other, sha) for other in shas if other != sha]
        patches += [k.patch(sha, other) for other in shas if other != sha]
        return [k.artifact(sha), k.weights(sha), *patches]

    def _kept(self, pipe: Any, model: str, shas: list[str]) -> set[str]:
        """The versions of ``model`` whose payloads stay (see the module's docstring)."""
        k = self.keys
        keep = set(shas[-self.keep_last :])
        keep |= {replies.text(v) for v in pipe.hvals(k.labels(model))}
        keep |= {replies.text(v) for v in pipe.hvals(k.assignments(model))}
        keep |= {replies.text(v) for v in pipe.hvals(k.pins(model))}
        target = pipe.get(k.target(model))
        if target is not None:
            keep.add(replies.text(target))
        rollout_id = pipe.get(k.active_rollout(model))
        if rollout_id is not None:
            raw = pipe.get(k.rollout(replies.text(rollout_id)))
            if raw is not None:
                body = json.loads(raw)
                keep |= {body.get("from_sha256") or "", body.get("to_sha256") or ""}
        by_number = self._numbers(pipe, model)
        prefix = f"mv:{model}|"
        for name in pipe.hkeys(k.fleet_counts):
            bucket = replies.text(name)
            if bucket.startswith(prefix):
                sha = by_number.get(bucket[len(prefix) :])
                if sha is not None:
                    keep.add(sha)
        keep.discard("")
        return keep

    def _numbers(self, pipe: Any, model: str) -> dict[str, str]:
        """``v<n>`` -> sha256, from the version set's scores."""
        rows = pipe.zrange(self.keys.versions(model), 0, -1, withscores=True)
        return {f"v{int(score)}": replies.text(sha) for sha, score in rows}


def _present(pipe: Any, keys: FleetKeys, shas: list[str]) -> set[str]:
    """The versions among ``shas`` that still have an artifact or weights in Redis."""
    if not shas:
        return set()
    found: set[str] = set()
    for sha in shas:
        if pipe.exists(keys.artifact(sha), keys.weights(sha)):
            found.add(sha)
    return found
