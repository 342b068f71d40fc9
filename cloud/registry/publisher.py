"""Publishing a model version: signed manifest, file, version number, payloads, announcement.

A version is immutable and named by the sha256 of its TFLite file. Publishing
is one WATCH/MULTI/EXEC on the model's version set, so that two trainers can
never hand out the same version number, and a version is announced only with
its manifest, artifact and patches already in place:

1. put the file in the registry's blob store (content-addressed, so a failed
   publish leaves at most an orphan blob);
2. read the latest version (the parent) under WATCH;
3. build the ``ModelManifest`` (number = latest + 1), serialize it once and
   sign exactly those bytes (``SignedManifest``);
4. build a patch from each base the edges are likely to hold (see
   ``patch_bases``): the parent, then the versions the most devices of the
   fleet report serving, until ``max_patches`` patches are made;
5. MULTI: SET the patches (with the registry's TTL), record the version in the
   registry (manifest, artifact, number, record, ``latest``), set the fleet's
   target (see below), XADD a ``DeltaAnnouncement`` listing the ``full``
   payload and the patches; EXEC.

The ``release`` mode says whether a new version goes to the whole fleet at
once. ``direct`` (the default) also SETs ``target(model)`` to it in the same
transaction, so edges (which serve ``pin or assignment or target``) move to it
as soon as they read the announcement; but while a rollout of the model is in
progress (``active_rollout(model)`` exists, and is WATCHed so that a rollout
created meanwhile retries the publish) the version is only registered: the
rollout owns the target. ``manual`` never touches the target: versions reach
edges through rollouts and operators.

A base whose file differs in length from the new one gets no patch (the edges
holding it fetch the full file), and neither does a sha256 that is not a
version of the model.

Replication. Redis copies writes to replicas after it has answered, so a master
that dies right after EXEC can take a version its replicas never saw. With
``wait_replicas`` (the trainer's ``publish_wait_replicas``) a publish is whole on
the master and on that many replicas before ``publish`` returns: on the
connection the confirmation uses, a script rewrites the version's record (the same
bytes, so a write that replicates after the EXEC) only if the version is there,
then ``WAIT``. Replication is in order, so the replicas that hold that write hold
the publish and every write before it (the trainer's weights of the version). Fewer
replicas in time, a lost connection, or a master that no longer has the version (its
slot moved to a replica that never saw it) raise ``PublishNotReplicated``: the
version may be on the master and announced, but nothing says it will survive the
master, so it does not count as published (the trainer's next round publishes
again on whatever the registry then holds). The announcement stays in the one
transaction: a version is never seen half-written, whatever happens between.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from types import EllipsisType
from typing import Any, Literal, cast

import redis

from cloud.registry.tuf_repo import TufRepository
from cloud.registry.versions import PatchUnavailable, Registry, VersionNotFound
from shared import replies
from shared.codec import encode_full, sha256_hex
from shared.errors import EdgeloopError, MessageError
from shared.keys import FleetKeys
from shared.messages import (
    DeltaAnnouncement,
    EdgeStatus,
    Exemplars,
    Explanation,
    ModelManifest,
    Payload,
    ProbeSet,
    SignedManifest,
    VersionRecord,
)
from shared.redis_client import node_pipeline
from shared.replies import REDIS_DOWN
from shared.signing import Signer
from shared.task import TaskSpec
from shared.tensors import TensorSpec

logger = logging.getLogger(__name__)


class PublishError(EdgeloopError):
    """A version could not be published."""


class StaleParent(PublishError):
    """Another version was published since the child was judged against its parent."""


class PublishNotReplicated(PublishError):
    """Fewer replicas than asked confirmed a version in time: it may be on the master
    (and announced) but may be lost with it, so it does not count as published."""

    def __init__(self, message: str, published: Published | None = None) -> None:
        super().__init__(message)
        self.published = published


__all__ = [
    "PublishError",
    "PublishNotReplicated",
    "PublishRequest",
    "Published",
    "Publisher",
    "StaleParent",
    "VersionNotFound",
]

#: Patches an announcement lists by default (the parent counts as one).
MAX_PATCHES = 4
#: Entries the deltas stream keeps (MAXLEN ~), announcements and the controller's notices
#: alike: an edge follows its desired version (target, assignment, pin), and one that was
#: away longer than this history reads what is left and still converges on it.
DELTAS_MAXLEN = 1000
#: Device statuses read to find the versions the fleet serves (the most recently seen).
DEVICE_SCAN = 10_000

#: Rewrites a version's record with its own bytes if the version is there (1), else 0: a
#: write that replicates after the publish, for WAIT to count (see the module docstring).
_TOUCH_RECORD = """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], record)
return 1
"""

#: Whether a publish moves the fleet's target (see the module docstring).
Release = Literal["direct", "manual"]

#: A version set read WITHSCORES, as a client without decode_responses returns it (redis-py
#: types the reply for every protocol and decoding): (sha256, version number) pairs.
_Scored = list[tuple[bytes, float]]


@dataclass(frozen=True)
class PublishRequest:
    """A version to publish: its file and what its manifest says of it, besides what the
    publish works out itself (number, parent, sha256, size).

    ``expected_parent`` (a sha256, or None for "no version yet") makes the publish
    fail with StaleParent if the latest version is another one: the gate judged the
    child against that parent, not a newer one. Left out (``...``), whatever is
    latest becomes the parent.
    """

    model: str
    content: bytes
    num_features: int
    labels: list[str]
    probe: ProbeSet
    runtime: str
    metrics: dict[str, float] = field(default_factory=dict)
    explanation: Explanation = field(default_factory=Explanation)
    expected_parent: str | EllipsisType | None = ...
    input: TensorSpec | None = None  # one sample's shape and dtype (None: flat float32)
    task: TaskSpec | None = None  # None: a classifier over ``labels``
    exemplars: Exemplars | None = None  # for the edges' adapters (the bootstrap's seed rows)
    #: Keys the version needs, written before the publish (the trainer's weights of it):
    #: checked under WATCH on the master that takes the publish, so that a failover which
    #: lost them never leaves a version without them (PublishNotReplicated).
    requires: tuple[str, ...] = ()

    def manifest(self, sha: str, parent: tuple[str, int] | None) -> ModelManifest:
        """The manifest of this version as the child of ``parent`` (sha256, number)."""
        parent_sha, parent_version = parent if parent is not None else (None, None)
        return ModelManifest(
            model=self.model,
            version=(parent_version or 0) + 1,
            sha256=sha,
            size=len(self.content),
            parent_sha256=parent_sha,
            parent_version=parent_version,
            num_features=self.num_features,
            labels=self.labels,
            input=self.input,
            task=self.task,
            runtime=self.runtime,
            metrics=self.metrics,
            explanation=self.explanation,
            probe=self.probe,
            exemplars=self.exemplars,
        )


@dataclass(frozen=True)
class Published:
    version: int
    sha256: str
    signed: SignedManifest
    announcement_id: str
    payloads: list[Payload] = field(default_factory=list)
    target_set: bool = False  # it became the fleet's target (release "direct")

    @property
    def manifest(self) -> ModelManifest:
        return self.signed.manifest()


class Publisher:
    """Writes signed versions of a fleet's models to the registry and announces them."""

    def __init__(
        self,
        registry: Registry,
        signer: Signer,
        *,
        max_patches: int = MAX_PATCHES,
        release: Release = "direct",
        tuf: TufRepository | None = None,
        deltas_maxlen: int = DELTAS_MAXLEN,
        wait_replicas: int = 0,
        wait_ms: int = 1000,
    ) -> None:
        self.registry = registry
        self.deltas_maxlen = deltas_maxlen
        self.client = registry.client
        self.keys = registry.keys
        self.signer = signer
        self.max_patches = max_patches
        self.release = release
        # None: the signed manifest alone vouches for a version (the edges' setting
        # ``tuf_root`` unset); see cloud/registry/tuf_repo.py.
        self.tuf = tuf
        self.wait_replicas, self.wait_ms = wait_replicas, wait_ms

    def publish(self, request: PublishRequest) -> Published:
        """Publish ``request.content`` as the next version of ``request.model``."""
        content, model = request.content, request.model
        sha = sha256_hex(content)
        artifact = encode_full(content)
        self.registry.blobs.put(content)
        served = served_versions(self.client, self.keys, model)
        versions_key, rollout_key = self.keys.versions(model), self.keys.active_rollout(model)
        done: list[Published] = []

        def txn(pipe: Any) -> None:
            missing = [key for key in request.requires if not pipe.exists(key)]
            if missing:
                raise PublishNotReplicated(
                    f"{model}: {', '.join(missing)} written before the publish is not on "
                    "the master (lost in a failover?); not published"
                )
            manifest = request.manifest(sha, self._parent(pipe, request, sha))
            manifest_json = manifest.model_dump_json()
            signature = self.signer.sign(manifest_json.encode("utf-8"))
            signed = SignedManifest(manifest_json=manifest_json, signature=signature)
            bases = patch_bases(pipe, versions_key, manifest.parent_sha256, served, sha)
            patches = self._patches(bases, content)
            payloads = [Payload(encoding="full", key=self.keys.artifact(sha), size=len(artifact))]
            payloads += [self._patch_payload(base, sha, patch) for base, patch in patches]
            announcement = DeltaAnnouncement(
                model=model,
                version=manifest.version,
                sha256=sha,
                manifest_key=self.keys.manifest(sha),
                payloads=payloads,
            )
            set_target = self.release == "direct" and not pipe.exists(rollout_key)
            tuf_writes = (
                self.tuf.stage_version(
                    pipe,
                    sha256=sha,
                    artifact=artifact,
                    manifest_wire=signed.to_wire().decode("utf-8"),
                    model=model,
                    version=manifest.version,
                    patches=patches,
                )
                if self.tuf is not None
                else {}
            )
            pipe.multi()
            for key, value in tuf_writes.items():
                pipe.set(key, value)
            for base, patch in patches:
                pipe.set(self.keys.patch(base, sha), patch, ex=self.registry.patch_ttl_s)
            record = VersionRecord.from_manifest(manifest)
            self.registry.record_version(pipe, record, signed, artifact)
            if set_target:
                pipe.set(self.keys.target(model), sha)
            pipe.xadd(
                self.keys.deltas,
                {"data": announcement.to_wire()},
                maxlen=self.deltas_maxlen,
                approximate=True,
            )
            done[:] = [Published(manifest.version, sha, signed, "", payloads, set_target)]

        # EXEC's replies (redis-py types them for every mode), the XADD's stream id last
        watched = [
            versions_key,
            rollout_key,
            *(self.tuf.watched() if self.tuf else []),
            *request.requires,
        ]
        try:
            answers = cast(list[object], self.client.transaction(txn, *watched))
        except redis.ResponseError as e:
            if not isinstance(e, redis.exceptions.NoPermissionError) and "NOPERM" not in str(e):
                raise
            hint = (
                ": release = \"direct\" sets the fleet's target, which the trainer's Redis"
                ' user may not write; use release = "manual" (the default in production)'
                if done and done[0].target_set
                else ""
            )
            raise PublishError(f"{model}: Redis refused the publish (NOPERM){hint}") from e
        announcement_id = replies.text(answers[-1])
        published = replace(done[0], announcement_id=announcement_id)
        _log(model, published, len(content), len(artifact))
        try:
            self.confirm(model, sha)
        except PublishNotReplicated as e:
            e.published = published
            raise
        return published

    def confirm(self, model: str, sha256: str) -> None:
        """With ``wait_replicas``: return once that many replicas hold the version
        ``sha256`` of ``model`` (and every write before it on its master), else
        PublishNotReplicated (see the module docstring). Also for a version whose
        publish raised and that turned out to be there ("already a published version")."""
        n = self.wait_replicas
        if n <= 0:
            return
        what = f"{model} {sha256[:12]}"
        records = self.keys.version_records(model)
        try:
            pipe = node_pipeline(self.client, records)
            pipe.eval(_TOUCH_RECORD, 1, records, sha256)
            pipe.execute_command("WAIT", n, self.wait_ms)
            there, acked = (int(r) for r in pipe.execute())
        except (redis.RedisError, *REDIS_DOWN) as e:
            raise PublishNotReplicated(
                f"{what} was published, but its confirmation by {n} replica(s) failed "
                f"({type(e).__name__}: {e}); it may be lost with the master"
            ) from e
        if not there:
            raise PublishNotReplicated(
                f"{what} is not on the master of its slot (lost in a failover?)"
            )
        if acked < n:
            raise PublishNotReplicated(
                f"{what} was published, but {acked} of {n} replica(s) confirmed it within "
                f"{self.wait_ms} ms; it may be lost with the master"
            )

    def _parent(self, pipe: Any, request: PublishRequest, sha: str) -> tuple[str, int] | None:
        """The latest version (sha256, number), read under WATCH: the new one's parent.

        StaleParent if it is not the one the request expects; PublishError if ``sha``
        is already a version.
        """
        versions_key = self.keys.versions(request.model)
        latest = pipe.zrevrange(versions_key, 0, 0, withscores=True)
        parent = (latest[0][0].decode(), int(latest[0][1])) if latest else None
        parent_sha = parent[0] if parent else None
        expected = request.expected_parent
        if expected is not ... and parent_sha != expected:
            raise StaleParent(
                f"{request.model}: latest is now {parent_sha and parent_sha[:12]}, "
                f"the child was judged against {expected and expected[:12]}"
            )
        if pipe.zscore(versions_key, sha) is not None:
            raise PublishError(f"{request.model}: {sha[:12]} is already a published version")
        return parent

    def _patch_payload(self, base: str, sha: str, patch: bytes) -> Payload:
        return Payload(
            encoding="patch", key=self.keys.patch(base, sha), size=len(patch), base_sha256=base
        )

    def _patches(self, bases: list[str], content: bytes) -> list[tuple[str, bytes]]:
        """(base, patch) for the first ``max_patches`` bases a patch can be made
        from (same length); the others are skipped."""
        out: list[tuple[str, bytes]] = []
        for base in bases:
            if len(out) >= self.max_patches:
                break
            try:
                out.append((base, self.registry.build_patch(base, content)))
            except (PatchUnavailable, VersionNotFound) as e:
                logger.info("no patch from %s: %s", base[:12], e)
        return out

    def latest(self, model: str) -> tuple[int, str, SignedManifest] | None:
        """(version, sha256, signed manifest) of the newest version, or None."""
        top = cast(_Scored, self.client.zrevrange(self.keys.versions(model), 0, 0, withscores=True))
        if not top:
            return None
        sha = top[0][0].decode()
        return int(top[0][1]), sha, self.signed_manifest(sha)

    def versions(self, model: str) -> list[tuple[int, str]]:
        """Every published (version, sha256), oldest first."""
        rows = cast(_Scored, self.client.zrange(self.keys.versions(model), 0, -1, withscores=True))
        return [(int(score), sha.decode()) for sha, score in rows]

    def signed_manifest(self, sha256: str) -> SignedManifest:
        raw = self.registry.manifest_bytes(sha256)  # a collected version's too
        if raw is None:
            raise VersionNotFound(f"no manifest for {sha256[:12]}")
        return SignedManifest.from_wire(raw)

    def content(self, sha256: str) -> bytes:
        """The TFLite bytes of a published version, checked against their name."""
        return self.registry.content_by_sha(sha256)


def _log(model: str, published: Published, size: int, artifact_size: int) -> None:
    patch_sizes = ", ".join(
        f"{p.size} from {p.base_sha256[:8]}" for p in published.payloads if p.base_sha256
    )
    logger.info(
        "published %s v%d (%s, %d bytes; full %d, patches: %s)%s",
        model,
        published.version,
        published.sha256[:12],
        size,
        artifact_size,
        patch_sizes or "none",
        "; it is the fleet's target" if published.target_set else "",
    )


def served_versions(
    client: redis.Redis, keys: FleetKeys, model: str, scan: int = DEVICE_SCAN
) -> Counter[str]:
    """How many of the fleet's devices report serving each sha256 of ``model``
    (the ``scan`` most recently seen devices whose status has not expired)."""
    ids = cast(list[bytes], client.zrevrange(keys.devices, 0, scan - 1))  # see _Scored
    served: Counter[str] = Counter()
    if not ids:
        return served
    for raw in client.mget([keys.device(i.decode()) for i in ids]):
        if raw is None:
            continue
        try:
            status = EdgeStatus.from_wire(raw)
        except MessageError:
            continue  # a device with a newer or broken report is not a reason to fail a publish
        if status.model == model and status.sha256:
            served[status.sha256] += 1
    return served


def patch_bases(
    pipe: Any, versions_key: str, parent: str | None, served: Counter[str], target: str
) -> list[str]:
    """The candidate bases for patches, best first: the parent, then the versions
    the most devices serve; each a published version of the model, not the target."""
    ordered = ([parent] if parent else []) + [sha for sha, _ in served.most_common()]
    out: list[str] = []
    for sha in ordered:
        if sha == target or sha in out:
            continue
        if sha == parent or pipe.zscore(versions_key, sha) is not None:
            out.append(sha)
    return out
