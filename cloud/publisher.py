"""Publishing a model version: signed manifest, artifact, version number, announcement.

A version is immutable and named by the sha256 of its TFLite file. Publishing
is one WATCH/MULTI/EXEC on the model's version set, so that two trainers can
never hand out the same version number, and a version is announced only with
its manifest and artifact already in place:

1. read the latest version (the parent) under WATCH;
2. build the ``ModelManifest`` (number = latest + 1), serialize it once and
   sign exactly those bytes (``SignedManifest``);
3. MULTI: SET manifest, SET artifact (zstd), ZADD the version set, XADD a
   ``DeltaAnnouncement`` to the delta stream; EXEC.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

import redis

from shared.codec import check_sha256, decode_full, encode_full, sha256_hex
from shared.errors import EdgeloopError
from shared.keys import FleetKeys
from shared.messages import (
    DeltaAnnouncement,
    Explanation,
    ModelManifest,
    Payload,
    ProbeSet,
    SignedManifest,
)
from shared.signing import Signer

logger = logging.getLogger(__name__)


class PublishError(EdgeloopError):
    """A version could not be published."""


class StaleParent(PublishError):
    """Another version was published since the child was judged against its parent."""


class VersionNotFound(PublishError):
    """No such version (or its artifact is gone)."""


@dataclass(frozen=True)
class Published:
    version: int
    sha256: str
    signed: SignedManifest
    announcement_id: str

    @property
    def manifest(self) -> ModelManifest:
        return self.signed.manifest()


class Publisher:
    """Writes signed versions of a fleet's models to Redis and announces them."""

    def __init__(self, client: redis.Redis, keys: FleetKeys, signer: Signer) -> None:
        self.client = client
        self.keys = keys
        self.signer = signer

    def publish(
        self,
        model: str,
        content: bytes,
        *,
        num_features: int,
        labels: list[str],
        probe: ProbeSet,
        runtime: str,
        metrics: dict[str, float] | None = None,
        explanation: Explanation | None = None,
        expected_parent: str | EllipsisType | None = ...,
    ) -> Published:
        """Publish ``content`` as the next version of ``model``.

        ``expected_parent`` (a sha256, or None for "no version yet") makes the
        publish fail with StaleParent if the latest version is another one: the
        gate judged the child against that parent, not a newer one. Left out
        (``...``), whatever is latest becomes the parent.
        """
        sha = sha256_hex(content)
        versions_key = self.keys.versions(model)
        artifact = encode_full(content)
        out: dict[str, Any] = {}

        def txn(pipe: Any) -> None:
            latest = pipe.zrevrange(versions_key, 0, 0, withscores=True)
            parent_sha = latest[0][0].decode() if latest else None
            parent_version = int(latest[0][1]) if latest else None
            if expected_parent is not ... and parent_sha != expected_parent:
                raise StaleParent(
                    f"{model}: latest is now {parent_sha and parent_sha[:12]}, "
                    f"the child was judged against {expected_parent and expected_parent[:12]}"
                )
            if pipe.zscore(versions_key, sha) is not None:
                raise PublishError(f"{model}: {sha[:12]} is already a published version")
            manifest = ModelManifest(
                model=model, version=(parent_version or 0) + 1, sha256=sha, size=len(content),
                parent_sha256=parent_sha, parent_version=parent_version, num_features=num_features,
                labels=labels, runtime=runtime, metrics=metrics or {},
                explanation=explanation or Explanation(), probe=probe,
            )  # fmt: skip
            manifest_json = manifest.model_dump_json()
            signed = SignedManifest(
                manifest_json=manifest_json,
                signature=self.signer.sign(manifest_json.encode("utf-8")),
            )
            announcement = DeltaAnnouncement(
                model=model, version=manifest.version, sha256=sha, manifest_key=self.keys.manifest(sha),
                payloads=[Payload(encoding="full", key=self.keys.artifact(sha), size=len(artifact))],
            )  # fmt: skip
            pipe.multi()
            pipe.set(self.keys.manifest(sha), signed.to_wire())
            pipe.set(self.keys.artifact(sha), artifact)
            pipe.zadd(versions_key, {sha: manifest.version})
            pipe.xadd(self.keys.deltas, {"data": announcement.to_wire()})
            out.update(version=manifest.version, signed=signed)

        results = self.client.transaction(txn, versions_key)
        stream_id = results[-1]
        announcement_id = stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)
        logger.info(
            "published %s v%d (%s, %d bytes)", model, out["version"], sha[:12], len(content)
        )
        return Published(out["version"], sha, out["signed"], announcement_id)

    def latest(self, model: str) -> tuple[int, str, SignedManifest] | None:
        """(version, sha256, signed manifest) of the newest version, or None."""
        top = self.client.zrevrange(self.keys.versions(model), 0, 0, withscores=True)
        if not top:
            return None
        sha = top[0][0].decode()
        return int(top[0][1]), sha, self.signed_manifest(sha)

    def versions(self, model: str) -> list[tuple[int, str]]:
        """Every published (version, sha256), oldest first."""
        rows = self.client.zrange(self.keys.versions(model), 0, -1, withscores=True)
        return [(int(score), sha.decode()) for sha, score in rows]

    def signed_manifest(self, sha256: str) -> SignedManifest:
        raw = self.client.get(self.keys.manifest(sha256))
        if raw is None:
            raise VersionNotFound(f"no manifest for {sha256[:12]}")
        return SignedManifest.from_wire(raw)

    def content(self, sha256: str) -> bytes:
        """The TFLite bytes of a published version, checked against their name."""
        blob = self.client.get(self.keys.artifact(sha256))
        if blob is None:
            raise VersionNotFound(f"no artifact for {sha256[:12]}")
        data = decode_full(blob)
        check_sha256(data, sha256)
        return data
