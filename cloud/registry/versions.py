"""The model registry: every published version of a fleet's models, their labels and lineage.

A version is immutable and content-addressed: it is named by the sha256 of its
TFLite file, numbered per model from 1 and names its parent. Labels
(``latest``, ``stable``, ``canary``, ...) point at versions and move; every
publish moves ``latest``, the others move only when someone moves them.

Where it lives (all of it survives a restart of the trainer or the API):

- Redis (AOF on): the version set ``versions(model)`` (sha256 scored by number),
  one ``VersionRecord`` per version in ``version_records(model)``, the labels in
  ``labels(model)``, the set of ``models``, each version's ``SignedManifest`` at
  ``manifest(sha)`` and its zstd file at ``artifact(sha)`` (the edges GET that),
  and patches between versions at ``patch(base, target)`` with a TTL: a cache
  that ``delta`` refills on demand.
- A ``BlobStore`` (``DirBlobStore`` on disk by default): the TFLite bytes by
  sha256. A blob is written before its version is recorded, so a recorded
  version always has one; a blob whose publish failed is an orphan, never a
  wrong answer.

Readers name a version by a *ref*: its number (``3`` or ``"v3"``), a label, its
sha256, or a unique prefix of at least 6 hex digits of it, tried in that order.

The publisher records versions inside its own WATCH/MULTI (``record_version``
queues the writes on its pipeline), so a version, its number, ``latest`` and
its announcement appear together or not at all.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import redis

from cloud.registry.blobs import BlobNotFound, BlobStore, DirBlobStore, MemoryBlobStore
from shared import replies
from shared.codec import check_sha256, decode_full, encode_full
from shared.delta import NotPatchable, make_patch
from shared.errors import EdgeloopError, NotFound
from shared.keys import FleetKeys, check_name
from shared.messages import ModelManifest, SignedManifest, VersionRecord

__all__ = [
    "LATEST",
    "AmbiguousRef",
    "BlobNotFound",
    "BlobStore",
    "DirBlobStore",
    "LabelError",
    "MemoryBlobStore",
    "PatchUnavailable",
    "Registry",
    "RegistryError",
    "UnknownBase",
    "VersionNotFound",
]

logger = logging.getLogger(__name__)

#: The label every publish moves to the new version; nobody else may move it.
LATEST = "latest"
#: Default lifetime of a cached patch in Redis.
PATCH_TTL_S = 7 * 24 * 3600

_LABEL = re.compile(r"^[a-z][a-z0-9_.\-]{0,31}$")
_NUMBER = re.compile(r"^[vV]?(\d{1,9})$")
_HEX = re.compile(r"^[0-9a-f]{6,64}$")


class RegistryError(EdgeloopError):
    """A registry operation cannot be done."""


class VersionNotFound(RegistryError, NotFound):
    """No version of the model matches the ref (number, label, sha256 or prefix)."""


class AmbiguousRef(VersionNotFound):
    """A sha256 prefix matches more than one version."""


class UnknownBase(VersionNotFound):
    """A patch was asked for from a base that is not a version of the model: fetch the full file."""


class PatchUnavailable(RegistryError):
    """No patch exists between these versions (their files differ in length): fetch the full file."""


class LabelError(RegistryError):
    """A label name is invalid or reserved."""


class Registry:
    """Read and write a fleet's versions; see the module docstring."""

    def __init__(
        self,
        client: redis.Redis,
        keys: FleetKeys,
        blobs: BlobStore,
        *,
        patch_ttl_s: int = PATCH_TTL_S,
    ) -> None:
        self.client = client
        self.keys = keys
        self.blobs = blobs
        self.patch_ttl_s = patch_ttl_s

    # -- reading -------------------------------------------------------------

    def models(self) -> list[str]:
        """Names of the models with at least one version, sorted."""
        return sorted(replies.text(m) for m in self.client.smembers(self.keys.models))

    def versions(self, model: str, limit: int | None = None) -> list[VersionRecord]:
        """Every version of ``model`` (the newest ``limit`` if given), oldest first, with labels."""
        _check_model(model)
        start = -limit if limit else 0
        rows: Any = self.client.zrange(self.keys.versions(model), start, -1)
        shas = [replies.text(sha) for sha in rows]
        records = self._records(model, shas)
        by_sha = self._labels_by_sha(model)
        for r in records:
            r.labels = by_sha.get(r.sha256, [])
        return records

    def get(self, model: str, ref: str | int) -> VersionRecord:
        """One version by ref (see the module docstring), with its labels."""
        sha = self.resolve(model, ref)
        record = self._records(model, [sha])[0]
        record.labels = self._labels_by_sha(model).get(sha, [])
        return record

    def latest(self, model: str) -> VersionRecord | None:
        """The newest version (by number), or None before the first publish."""
        _check_model(model)
        top = self.client.zrevrange(self.keys.versions(model), 0, 0)
        return self.get(model, replies.text(top[0])) if top else None

    def resolve(self, model: str, ref: str | int) -> str:
        """The sha256 a ref names; VersionNotFound if none (or an ambiguous prefix)."""
        _check_model(model)
        versions_key = self.keys.versions(model)
        text = str(ref).strip()
        number = _NUMBER.match(text)
        if number:
            found = self.client.zrangebyscore(versions_key, number[1], number[1])
            if not found:
                raise VersionNotFound(f"{model} has no version {number[1]}")
            return replies.text(found[0])
        labelled = self.client.hget(self.keys.labels(model), text) if _LABEL.match(text) else None
        if labelled is not None:
            return replies.text(labelled)
        if len(text) == 64 and _HEX.match(text):
            if self.client.zscore(versions_key, text) is None:
                raise VersionNotFound(f"{text[:12]} is not a version of {model}")
            return text
        if _HEX.match(text):
            matches = [
                replies.text(s)
                for s in self.client.zrange(versions_key, 0, -1)
                if replies.text(s).startswith(text)
            ]
            if len(matches) == 1:
                return matches[0]
            if matches:
                raise AmbiguousRef(
                    f"{text!r} matches {len(matches)} versions of {model}: give more hex digits"
                )
        raise VersionNotFound(
            f"{model} has no version, label or sha256 {text!r}; "
            "name a version by number, label or sha256 (prefix of 6+ hex digits)"
        )

    def signed_manifest(self, model: str, ref: str | int) -> SignedManifest:
        """The manifest of a version as it was signed (verify before trusting it)."""
        sha = self.resolve(model, ref)
        raw = self.manifest_bytes(sha)
        if raw is None:
            raise VersionNotFound(f"{model} {sha[:12]} has no manifest in Redis")
        return SignedManifest.from_wire(raw)

    def manifest_bytes(self, sha256: str) -> bytes | None:
        """A version's signed manifest as stored: in Redis, else (a collected version's,
        cloud/registry/collect.py) in the blob store; None if neither has it."""
        raw = self.client.get(self.keys.manifest(sha256))
        if raw is not None:
            return replies.binary(raw)
        pointer = self.client.hget(self.keys.manifest_archive, sha256)
        if pointer is None:
            return None
        try:
            return self.blobs.get(replies.text(pointer))
        except BlobNotFound:
            return None

    def manifest(self, model: str, ref: str | int) -> ModelManifest:
        return self.signed_manifest(model, ref).manifest()

    def content(self, model: str, ref: str | int) -> bytes:
        """The TFLite bytes of a version, checked against its name."""
        return self.content_by_sha(self.resolve(model, ref))

    def content_by_sha(self, sha256: str) -> bytes:
        """The TFLite bytes named ``sha256``: from the blob store, else from the
        artifact the edges fetch (versions published before the blob store)."""
        try:
            return self.blobs.get(sha256)
        except BlobNotFound:
            blob = self.client.get(self.keys.artifact(sha256))
            if blob is None:
                raise VersionNotFound(
                    f"no file for {sha256[:12]} in {self.blobs!r} or Redis"
                ) from None
            data = decode_full(replies.binary(blob))
            check_sha256(data, sha256, what=f"artifact {sha256[:12]}")
            return data

    def lineage(self, model: str, ref: str | int) -> list[VersionRecord]:
        """The version and its ancestors, newest first, back to the first version."""
        sha: str | None = self.resolve(model, ref)
        rows = self.client.hgetall(self.keys.version_records(model))
        stored = {replies.text(k): v for k, v in rows.items()}
        by_sha = self._labels_by_sha(model)
        out: list[VersionRecord] = []
        seen: set[str] = set()
        while sha is not None and sha not in seen:
            seen.add(sha)
            raw = stored.get(sha)
            record = (
                VersionRecord.from_wire(raw) if raw is not None else self._record_of(model, sha)
            )
            record.labels = by_sha.get(sha, [])
            out.append(record)
            sha = record.parent_sha256
        return out

    def labels(self, model: str) -> dict[str, VersionRecord]:
        """Every label of ``model`` and the version it points at."""
        _check_model(model)
        pairs = {
            replies.text(k): replies.text(v)
            for k, v in self.client.hgetall(self.keys.labels(model)).items()
        }
        shas = sorted(set(pairs.values()))
        records = dict(zip(shas, self._records(model, shas), strict=True))
        by_sha = self._labels_by_sha(model)
        for sha, record in records.items():
            record.labels = by_sha.get(sha, [])
        return {label: records[sha] for label, sha in sorted(pairs.items())}

    # -- writing -------------------------------------------------------------

    def record_version(
        self, pipe: Any, record: VersionRecord, signed: SignedManifest, artifact: bytes
    ) -> None:
        """Queue the writes that make ``record`` a version, on a pipeline in MULTI.

        The caller has put the file in the blob store and holds a WATCH on
        ``versions(model)``; the version number is its to choose.
        """
        model, sha = record.model, record.sha256
        stored = record.model_copy(update={"labels": []})
        pipe.set(self.keys.manifest(sha), signed.to_wire())
        pipe.set(self.keys.artifact(sha), artifact)
        pipe.zadd(self.keys.versions(model), {sha: record.version})
        pipe.hset(self.keys.version_records(model), sha, stored.to_wire())
        pipe.sadd(self.keys.models, model)
        pipe.hset(self.keys.labels(model), LATEST, sha)

    def queue_artifact(self, pipe: Any, sha256: str) -> None:
        """Queue ``SET artifact(sha256) NX`` from the blob store (and ``SET manifest(sha256)
        NX`` from its archive) on a pipeline in MULTI:
        a version whose payloads were collected (cloud/registry/collect.py) is fetchable
        again by the time a pin or an assignment naming it is written, in the same
        transaction. A no-op for a version whose artifact is there."""
        try:
            content = self.blobs.get(sha256)
        except BlobNotFound:
            return  # a version from before the blob store: its payloads are never collected
        pipe.set(self.keys.artifact(sha256), encode_full(content), nx=True)
        manifest = self.manifest_bytes(sha256)
        if manifest is not None:
            pipe.set(self.keys.manifest(sha256), manifest, nx=True)

    def set_label(self, model: str, label: str, ref: str | int) -> VersionRecord:
        """Point ``label`` at a version (moving it if it pointed elsewhere)."""
        _check_label(label)
        sha = self.resolve(model, ref)
        previous = self.client.hget(self.keys.labels(model), label)
        self.client.hset(self.keys.labels(model), label, sha)
        logger.info(
            "%s: label %s -> %s (was %s)",
            model,
            label,
            sha[:12],
            replies.text(previous)[:12] if previous else "unset",
        )
        return self.get(model, sha)

    def remove_label(self, model: str, label: str) -> bool:
        """Remove ``label``; False if it was not set."""
        _check_model(model)
        _check_label(label)
        return bool(self.client.hdel(self.keys.labels(model), label))

    # -- deltas --------------------------------------------------------------

    def delta(self, model: str, base_sha256: str, target_sha256: str) -> bytes:
        """A patch from ``base`` to ``target`` (refs or sha256s), cached in Redis.

        UnknownBase if the base is not a version of ``model``; PatchUnavailable if
        the two files differ in length. Either way the caller ships the full file.
        """
        target = self.resolve(model, target_sha256)
        try:
            base = self.resolve(model, base_sha256)
        except VersionNotFound as e:
            raise UnknownBase(
                f"base {str(base_sha256)[:12]} is not a version of {model}: fetch the full file"
            ) from e
        key = self.keys.patch(base, target)
        cached = self.client.get(key)
        if cached is not None:
            return replies.binary(cached)
        patch = self.build_patch(base, self.content_by_sha(target))
        self.client.set(key, patch, ex=self.patch_ttl_s)
        return patch

    def build_patch(self, base_sha256: str, target: bytes) -> bytes:
        """A patch from the stored file ``base_sha256`` to ``target`` (not cached:
        the publisher writes it in its own transaction). PatchUnavailable if the
        lengths differ."""
        try:
            return make_patch(self.content_by_sha(base_sha256), target)
        except NotPatchable as e:
            raise PatchUnavailable(f"no patch from {base_sha256[:12]}: {e}") from e

    # -- helpers -------------------------------------------------------------

    def _records(self, model: str, shas: list[str]) -> list[VersionRecord]:
        if not shas:
            return []
        raws = self.client.hmget(self.keys.version_records(model), shas)
        return [
            VersionRecord.from_wire(raw) if raw is not None else self._record_of(model, sha)
            for sha, raw in zip(shas, raws, strict=True)
        ]

    def _record_of(self, model: str, sha: str) -> VersionRecord:
        """A record rebuilt from the manifest (versions published before records existed)."""
        raw = self.manifest_bytes(sha)
        if raw is None:
            raise VersionNotFound(f"{model} {sha[:12]} has neither a record nor a manifest")
        return VersionRecord.from_manifest(SignedManifest.from_wire(raw).manifest())

    def _labels_by_sha(self, model: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for label, sha in sorted(self.client.hgetall(self.keys.labels(model)).items()):
            out.setdefault(replies.text(sha), []).append(replies.text(label))
        return out


def _check_model(model: str) -> None:
    try:
        check_name("model", model)
    except ValueError as e:
        raise VersionNotFound(str(e)) from e


def _check_label(label: str) -> None:
    if not _LABEL.match(label) or _NUMBER.match(label):
        raise LabelError(
            f"invalid label {label!r}: use 1-32 lowercase letters, digits, '_', '.' or '-', "
            "starting with a letter, and not a version number like v3"
        )
    if label == LATEST:
        raise LabelError(f"{LATEST!r} moves with every publish and cannot be set by hand")
