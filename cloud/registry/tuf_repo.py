"""A fleet's TUF repository in Redis, kept with python-tuf's Metadata API.

Roles and who holds their keys:

- ``root``: k of n offline keys (files for development; an operator keeps them
  on removable media or a hardware token and brings them out only to sign a new
  root). Root names the keys of every other role.
- ``targets``: the trainer's key. Each published version adds one target file,
  ``artifacts/<sha256>`` (the zstd file the edges download) with its length and
  sha256, and our ``SignedManifest`` as the target's ``custom`` metadata, so an
  edge believes a manifest only once targets (and so snapshot and timestamp)
  vouch for it.
- ``snapshot`` and ``timestamp``: one online key held by the cloud process that
  re-signs them on a schedule (``refresh``, run by the rollout controller's
  loop: it is the long-running cloud process that already owns fleet-wide
  state; the API scales out and restarts, the trainer should not hold more keys
  than it must). Their expiry is short (``TIMESTAMP_TTL_S``), so a frozen
  repository is noticed by the edges within that time.

When the publisher holds the online key too (development, ``release = direct``),
``stage_version`` writes snapshot and timestamp in the publish transaction;
otherwise the version is visible to edges after the next ``refresh``.

The keys are made and changed by ``edgeloop keys`` (cloud/registry/tuf_keys.py):
each change is a new root stored by ``publish_root``; the director's keys are in
the root's custom field ``DIRECTOR_FIELD``. A process refuses to sign a role with a
key the current root does not name (it was rotated out).

Files live at the keys of shared/tuf_paths.py; writes are WATCH/MULTI on
``targets.json`` so that two publishes never sign the same targets version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, Key
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from shared.errors import ConfigError, EdgeloopError
from shared.keys import FleetKeys
from shared.tuf_paths import DIRECTOR_FIELD, artifact_path, metadata_key, patch_path

logger = logging.getLogger(__name__)

__all__ = [
    "DIRECTOR_FIELD",
    "ROOT_TTL_S",
    "TARGETS_TTL_S",
    "TIMESTAMP_TTL_S",
    "RepositoryMissing",
    "TufRepository",
    "TufSigners",
    "director_keys",
    "load_signer",
    "set_director_keys",
    "tuf_repository",
]

ROOT_TTL_S = 365 * 24 * 3600
TARGETS_TTL_S = 365 * 24 * 3600
#: Snapshot and timestamp lifetime: an edge that sees nothing newer for this long
#: reports ``stale``. ``refresh`` must run several times within it.
TIMESTAMP_TTL_S = 3600
#: Hash listed for each target (what ngclient checks before a file is used).
HASHES = ["sha256"]

_SERIALIZER = JSONSerializer(compact=True)


class RepositoryMissing(EdgeloopError):
    """The fleet has no TUF repository yet (``initialize`` was never run)."""


def load_signer(path: Path) -> CryptoSigner:
    """A TUF signer from an Ed25519 private key PEM (the format of shared/signing.py)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"TUF key {path} does not load: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"TUF key {path} is not an Ed25519 private key")
    return CryptoSigner(key)


@dataclass(frozen=True)
class TufSigners:
    """The keys a process holds; None for a role it may not sign."""

    targets: CryptoSigner | None = None
    online: CryptoSigner | None = None  # snapshot and timestamp


def tuf_repository(
    client: redis.Redis,
    keys: FleetKeys,
    targets_key: Path | None,
    online_key: Path | None,
) -> TufRepository | None:
    """The repository a process signs with the keys it was given; None without any."""
    if targets_key is None and online_key is None:
        return None
    return TufRepository(
        client,
        keys,
        TufSigners(
            targets=load_signer(targets_key) if targets_key else None,
            online=load_signer(online_key) if online_key else None,
        ),
    )


def _expiry(ttl_s: int) -> datetime:
    return (datetime.now(timezone.utc) + timedelta(seconds=ttl_s)).replace(microsecond=0)


class TufRepository:
    """Reads and writes the TUF metadata of one fleet."""

    def __init__(
        self,
        client: redis.Redis,
        keys: FleetKeys,
        signers: TufSigners,
        *,
        timestamp_ttl_s: int = TIMESTAMP_TTL_S,
        targets_ttl_s: int = TARGETS_TTL_S,
    ) -> None:
        self.client, self.keys, self.signers = client, keys, signers
        self.timestamp_ttl_s = timestamp_ttl_s
        self.targets_ttl_s = targets_ttl_s

    def key(self, name: str) -> str:
        return metadata_key(self.keys, name)

    # -- ceremony (development) ---------------------------------------------

    def initialize(
        self,
        root_signers: list[CryptoSigner],
        threshold: int,
        *,
        root_keys: list[Key] | None = None,
        root_ttl_s: int = ROOT_TTL_S,
        director_keys: list[Key] | None = None,
    ) -> bytes:
        """Write root v1 (threshold ``threshold`` of ``root_keys``, signed by
        ``root_signers``), an empty targets, snapshot and timestamp. Returns the
        root's bytes: the trusted root to put on the devices."""
        targets_signer, online = self._need_both()
        keys = root_keys or [s.public_key for s in root_signers]
        if not 1 <= threshold <= len(keys) or len(root_signers) < threshold:
            raise ConfigError(
                f"root threshold {threshold} needs at least that many of {len(keys)} keys "
                f"to sign; {len(root_signers)} given"
            )
        root = Metadata(Root(expires=_expiry(root_ttl_s), consistent_snapshot=False))
        for key in keys:
            root.signed.add_key(key, "root")
        root.signed.roles["root"].threshold = threshold
        root.signed.add_key(targets_signer.public_key, "targets")
        root.signed.add_key(online.public_key, "snapshot")
        root.signed.add_key(online.public_key, "timestamp")
        if director_keys:
            set_director_keys(root.signed, director_keys)
        for s in root_signers:
            root.sign(s, append=True)
        root_bytes = root.to_bytes(_SERIALIZER)
        targets = Metadata(Targets(expires=_expiry(self.targets_ttl_s)))
        targets.sign(targets_signer)
        writes = {self.key("1.root.json"): root_bytes, self.key("root.json"): root_bytes}
        writes.update(self._online(targets.signed.version, None))
        writes[self.key("targets.json")] = targets.to_bytes(_SERIALIZER)
        pipe = self.client.pipeline()
        for k, v in writes.items():
            pipe.set(k, v)
        pipe.execute()
        logger.info(
            "TUF repository of fleet %s created (root %d of %d)",
            self.keys.fleet,
            threshold,
            len(keys),
        )
        return root_bytes

    def _need_both(self) -> tuple[CryptoSigner, CryptoSigner]:
        if self.signers.targets is None or self.signers.online is None:
            raise ConfigError("creating a repository needs the targets and the online key")
        return self.signers.targets, self.signers.online

    # -- publishing ----------------------------------------------------------

    def watched(self) -> list[str]:
        """Keys a publish transaction must WATCH besides its own."""
        return [self.key("targets.json"), self.key("snapshot.json"), self.key("timestamp.json")]

    def stage_version(
        self,
        pipe: Any,
        *,
        sha256: str,
        artifact: bytes,
        manifest_wire: str,
        model: str,
        version: int,
        patches: list[tuple[str, bytes]] | None = None,
    ) -> dict[str, bytes]:
        """The metadata writes that add version ``sha256`` to targets (and, with the
        online key, to snapshot and timestamp), with each of ``patches`` (base sha256,
        patch bytes) as target ``patches/<base>/<sha256>``. ``pipe`` is in WATCH mode
        (before MULTI): reads go through it so that a concurrent publish retries."""
        if self.signers.targets is None:
            raise ConfigError("publishing into TUF needs the targets key")
        self._check_named(pipe, "targets", self.signers.targets)
        if self.signers.online is not None:
            self._check_named(pipe, "timestamp", self.signers.online)
        raw = pipe.get(self.key("targets.json"))
        if raw is None:
            raise RepositoryMissing(f"fleet {self.keys.fleet} has no TUF repository")
        targets = Metadata[Targets].from_bytes(raw)
        tf = TargetFile.from_data(artifact_path(sha256), artifact, HASHES)
        tf.unrecognized_fields["custom"] = {
            "edgeloop": {"model": model, "version": version, "manifest": manifest_wire}
        }
        targets.signed.targets[tf.path] = tf
        for base, patch in patches or []:
            # Listed with its length and hash like the full file; the edge takes its
            # manifest from the version's artifact target. A patch whose key expired
            # (the registry's patch_ttl_s) is a failed download: the edge falls back
            # to the full file.
            pf = TargetFile.from_data(patch_path(base, sha256), patch, HASHES)
            pf.unrecognized_fields["custom"] = {"edgeloop": {"base": base, "sha256": sha256}}
            targets.signed.targets[pf.path] = pf
        targets.signed.version += 1
        targets.signed.expires = _expiry(self.targets_ttl_s)
        targets.sign(self.signers.targets)
        writes = {self.key("targets.json"): targets.to_bytes(_SERIALIZER)}
        if self.signers.online is not None:
            writes.update(self._online(targets.signed.version, pipe))
        return writes

    # -- the schedule (snapshot + timestamp) ---------------------------------

    def refresh(self) -> int:
        """Re-sign snapshot (when targets changed) and timestamp with a new expiry;
        the timestamp version written."""
        if self.signers.online is None:
            raise ConfigError("refreshing the timestamp needs the online key")
        written: list[int] = []

        def txn(pipe: Any) -> None:
            assert self.signers.online is not None
            self._check_named(pipe, "timestamp", self.signers.online)
            raw = pipe.get(self.key("targets.json"))
            if raw is None:
                raise RepositoryMissing(f"fleet {self.keys.fleet} has no TUF repository")
            version = Metadata[Targets].from_bytes(raw).signed.version
            writes = self._online(version, pipe)
            pipe.multi()
            for k, v in writes.items():
                pipe.set(k, v)
            ts = Metadata[Timestamp].from_bytes(writes[self.key("timestamp.json")])
            written[:] = [ts.signed.version]

        self.client.transaction(txn, *self.watched())
        return written[0]

    def _check_named(self, pipe: Any, role: str, signer: CryptoSigner) -> None:
        """Refuse to sign ``role`` with a key the fleet's root no longer names: a
        process still holding a rotated-out key would only write metadata that every
        edge refuses, and hide the repository's good metadata behind it."""
        raw = pipe.get(self.key("root.json"))
        if raw is None:
            raise RepositoryMissing(f"fleet {self.keys.fleet} has no TUF repository")
        root = Metadata[Root].from_bytes(bytes(raw)).signed
        if signer.public_key.keyid not in root.roles[role].keyids:
            raise ConfigError(
                f"this process's {role} key ({signer.public_key.keyid[:16]}) is not the one "
                f"the fleet's TUF root v{root.version} names: it was rotated out; restart "
                "with the new key (`edgeloop keys show`)"
            )

    def _online(self, targets_version: int, pipe: Any | None) -> dict[str, bytes]:
        """New snapshot (naming ``targets_version``) and timestamp, each one version
        above the stored one."""
        assert self.signers.online is not None
        # No pipe: a new repository, nothing to read.
        old_snap = pipe.get(self.key("snapshot.json")) if pipe is not None else None
        old_ts = pipe.get(self.key("timestamp.json")) if pipe is not None else None
        snap_version = (
            Metadata[Snapshot].from_bytes(bytes(old_snap)).signed.version if old_snap else 0
        )
        ts_version = Metadata[Timestamp].from_bytes(bytes(old_ts)).signed.version if old_ts else 0
        snapshot = Metadata(
            Snapshot(
                version=snap_version + 1,
                expires=_expiry(self.timestamp_ttl_s),
                meta={"targets.json": MetaFile(version=targets_version)},
            )
        )
        snapshot.sign(self.signers.online)
        snap_bytes = snapshot.to_bytes(_SERIALIZER)
        timestamp = Metadata(
            Timestamp(
                version=ts_version + 1,
                expires=_expiry(self.timestamp_ttl_s),
                snapshot_meta=MetaFile(version=snapshot.signed.version),
            )
        )
        timestamp.sign(self.signers.online)
        return {
            self.key("snapshot.json"): snap_bytes,
            self.key("timestamp.json"): timestamp.to_bytes(_SERIALIZER),
        }

    def publish_root(
        self,
        root_bytes: bytes,
        targets_signer: CryptoSigner | None = None,
        *,
        resign_online: bool = False,
    ) -> None:
        """Store a new root version (``N.root.json`` and ``root.json``: the chain edges
        walk). With ``targets_signer`` (a rotated targets key) targets are re-signed
        with it in the same transaction, every listed version kept, and with the
        online key snapshot and timestamp too, so that edges never see a targets file
        the snapshot does not name. ``resign_online`` (a rotated online key): snapshot
        and timestamp are re-signed by it at once. The caller checked the root's
        signatures."""
        version = Metadata[Root].from_bytes(root_bytes).signed.version

        def txn(pipe: Any) -> None:
            current = pipe.get(self.key("root.json"))
            now = Metadata[Root].from_bytes(bytes(current)).signed.version if current else 0
            if now != version - 1:  # another ceremony stored a root meanwhile
                raise ConfigError(
                    f"the fleet's root is v{now} now; a v{version} must follow v{version - 1}"
                )
            writes = {
                self.key(f"{version}.root.json"): root_bytes,
                self.key("root.json"): root_bytes,
            }
            if targets_signer is not None:
                raw = pipe.get(self.key("targets.json"))
                if raw is None:
                    raise RepositoryMissing(f"fleet {self.keys.fleet} has no TUF repository")
                targets = Metadata[Targets].from_bytes(raw)
                targets.signed.version += 1
                targets.signed.expires = _expiry(self.targets_ttl_s)
                targets.sign(targets_signer)
                writes[self.key("targets.json")] = targets.to_bytes(_SERIALIZER)
                if self.signers.online is not None:
                    writes.update(self._online(targets.signed.version, pipe))
            elif resign_online and self.signers.online is not None:
                raw = pipe.get(self.key("targets.json"))
                if raw is not None:
                    current = Metadata[Targets].from_bytes(raw).signed.version
                    writes.update(self._online(current, pipe))
            pipe.multi()
            for k, v in writes.items():
                pipe.set(k, v)

        self.client.transaction(txn, *self.watched(), self.key("root.json"))
        logger.info("TUF root v%d of fleet %s published", version, self.keys.fleet)

    def root(self) -> bytes:
        """The newest root (what a new device is given as its trusted root)."""
        raw = self.client.get(self.key("root.json"))
        if raw is None:
            raise RepositoryMissing(f"fleet {self.keys.fleet} has no TUF repository")
        return bytes(raw)  # type: ignore[arg-type]


def set_director_keys(root: Root, keys: list[Key], threshold: int = 1) -> None:
    """Name ``keys`` as the director's in ``root`` (its custom field ``DIRECTOR_FIELD``)."""
    root.unrecognized_fields[DIRECTOR_FIELD] = {
        "keys": {k.keyid: k.to_dict() for k in keys},
        "threshold": threshold,
    }


def director_keys(root: Root) -> dict[str, Key] | None:
    """The director keys ``root`` names, by keyid; None when it names none."""
    field = root.unrecognized_fields.get(DIRECTOR_FIELD)
    if not isinstance(field, dict) or not isinstance(field.get("keys"), dict):
        return None
    return {keyid: Key.from_dict(keyid, dict(d)) for keyid, d in field["keys"].items()}
