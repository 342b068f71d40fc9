"""The key ceremony of a fleet's TUF repository: create, rotate and revoke keys.

A key directory (development: files, mode 0600) holds::

    root/<keyid16>.key   the root keys (k of n): offline, on removable media
    targets.key          the trainer's ``tuf_targets_key``
    online.key           snapshot and timestamp (the controller's ``tuf_online_key``)
    director.key/.pub    the rollout controller's director key
    root.json            the newest root: what a new device is given as ``tuf_root``
    retired/             keys rotated out (kept for the record, trusted by nobody)

Every change is a new root version that TUF's chain rules accept: signed by the
threshold of the *old* root's root keys and by the threshold of the *new* root's
(checked here with python-tuf before anything is stored). Edges follow the chain
through their ngclient Updater (``N.root.json``), so nothing is edited on a device.
Rotating the targets key re-signs targets with the new key in the same Redis
transaction (every stored version stays listed, with its length and hash), and
snapshot and timestamp with the online key. Snapshot and timestamp share the
online key: rotating either rotates both. The director's keys live in the root's
custom field ``DIRECTOR_FIELD``.

Nothing is written to a key file before the new root verifies; new key files are
put in place only after Redis took the new root.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, Key, SSlibKey
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization.json import CanonicalJSONSerializer, JSONSerializer

from cloud.registry.tuf_repo import (
    ROOT_TTL_S,
    RepositoryMissing,
    TufRepository,
    TufSigners,
    director_keys,
    load_signer,
    set_director_keys,
)
from shared.errors import ConfigError
from shared.keys import FleetKeys

logger = logging.getLogger(__name__)

__all__ = [
    "ROLES",
    "KeyDir",
    "RootChange",
    "current_root",
    "init_fleet",
    "publish_root_file",
    "revoke_key",
    "rotate_key",
]

#: What ``keys rotate`` and ``keys revoke`` accept.
ROLES = ("root", "targets", "snapshot", "timestamp", "director")
_ONLINE = ("snapshot", "timestamp")
_SERIALIZER = JSONSerializer(compact=True)


def _new_key() -> tuple[bytes, SSlibKey]:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, SSlibKey.from_crypto(private.public_key())


def _write_private(path: Path, pem: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _public_pem(private_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class KeyDir:
    """Where a fleet's keys are (see the module docstring)."""

    path: Path
    root_dir: Path | None = None  # default path/root; an operator points it at the USB stick

    @property
    def roots(self) -> Path:
        return self.root_dir or self.path / "root"

    def file(self, role: str) -> Path:
        name = "online" if role in _ONLINE else role
        return self.path / f"{name}.key"

    @property
    def trusted_root(self) -> Path:
        return self.path / "root.json"

    def signer(self, role: str) -> CryptoSigner:
        path = self.file(role)
        if not path.exists():
            raise ConfigError(f"no {role} key at {path}: give the fleet's key directory (--keys)")
        return load_signer(path)

    def root_signers(self) -> dict[str, CryptoSigner]:
        """The root keys at hand, by keyid; ConfigError when there is none."""
        files = sorted(self.roots.glob("*.key")) if self.roots.is_dir() else []
        if not files:
            raise ConfigError(
                f"no root keys in {self.roots}: give the directory of the offline root keys "
                "(--root-keys-dir) or the fleet's key directory (--keys)"
            )
        signers = [load_signer(f) for f in files]
        return {s.public_key.keyid: s for s in signers}


@dataclass
class RootChange:
    """A new root, the signers that sign it, and the key files to put in place."""

    old: Metadata[Root]
    new: Metadata[Root]
    new_files: dict[Path, bytes] = field(default_factory=dict)
    retire: list[Path] = field(default_factory=list)
    new_root_signers: dict[str, CryptoSigner] = field(default_factory=dict)


def current_root(client: redis.Redis, keys: FleetKeys) -> Metadata[Root]:
    raw = client.get(keys.tuf_metadata("root.json"))
    if raw is None:
        raise RepositoryMissing(
            f"fleet {keys.fleet} has no TUF repository: run `edgeloop keys init` first"
        )
    return Metadata[Root].from_bytes(bytes(raw))  # type: ignore[arg-type]


def _expiry(ttl_s: int) -> datetime:
    return (datetime.now(timezone.utc) + timedelta(seconds=ttl_s)).replace(microsecond=0)


def init_fleet(
    client: redis.Redis,
    keys: FleetKeys,
    keydir: KeyDir,
    *,
    root_keys: int = 3,
    threshold: int = 2,
    director: bool = True,
) -> bytes:
    """Create every key of a new fleet in ``keydir`` and store root v1 (with empty
    targets, snapshot and timestamp) in Redis. Returns root v1's bytes."""
    if not 1 <= threshold <= root_keys:
        raise ConfigError(
            f"threshold {threshold} must be between 1 and the number of root keys ({root_keys})"
        )
    if client.exists(keys.tuf_metadata("root.json")):
        raise ConfigError(
            f"fleet {keys.fleet} already has a TUF repository: rotate keys instead "
            "(`edgeloop keys rotate ROLE`)"
        )
    existing = [*keydir.roots.glob("*.key")] if keydir.roots.is_dir() else []
    existing += [p for p in (keydir.file("targets"), keydir.trusted_root) if p.exists()]
    if existing:
        raise ConfigError(f"{existing[0]} exists; refusing to overwrite a fleet's keys")
    roots = [_new_key() for _ in range(root_keys)]
    targets_pem, _ = _new_key()
    online_pem, _ = _new_key()
    director_pem, director_key = _new_key()
    signers = [CryptoSigner(_load(pem)) for pem, _ in roots]
    repo = TufRepository(
        client,
        keys,
        TufSigners(CryptoSigner(_load(targets_pem)), CryptoSigner(_load(online_pem))),
    )
    root_bytes = repo.initialize(
        signers, threshold, director_keys=[director_key] if director else None
    )
    for pem, key in roots:
        _write_private(keydir.roots / f"{key.keyid[:16]}.key", pem)
    _write_private(keydir.file("targets"), targets_pem)
    _write_private(keydir.file("online"), online_pem)
    if director:
        _write_private(keydir.file("director"), director_pem)
        (keydir.path / "director.pub").write_bytes(_public_pem(director_pem))
    keydir.trusted_root.write_bytes(root_bytes)
    return root_bytes


def _load(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: one of {', '.join(ROLES)}")


def _keyids(root: Root, role: str) -> list[str]:
    if role == "director":
        return sorted(director_keys(root) or {})
    return list(root.roles[role].keyids)


def _match(root: Root, role: str, keyid: str) -> str:
    """The full keyid of ``role`` that ``keyid`` (a unique prefix of 8+ digits) names."""
    found = [k for k in _keyids(root, role) if k.startswith(keyid.lower())] if keyid else []
    if len(keyid) < 8 or len(found) != 1:
        raise ConfigError(
            f"{role} has no key {keyid!r} (give 8 or more digits of one of: "
            f"{', '.join(k[:16] for k in _keyids(root, role)) or 'none'})"
        )
    return found[0]


def _begin(client: redis.Redis | None, keys: FleetKeys, keydir: KeyDir, ttl_s: int) -> RootChange:
    old = current_root(client, keys) if client is not None else _root_file(keydir.trusted_root)
    new = Metadata[Root].from_bytes(old.to_bytes(_SERIALIZER))
    new.signatures.clear()
    new.signed.version += 1
    new.signed.expires = _expiry(ttl_s)
    return RootChange(old, new)


def _replace(change: RootChange, keydir: KeyDir, role: str, keyid: str | None) -> Key:
    """Swap ``keyid`` of ``role`` (all its keys when None) for one new key."""
    root = change.new.signed
    pem, key = _new_key()
    if role == "director":
        current = director_keys(root) or {}
        kept = [k for i, k in current.items() if keyid is not None and i != keyid]
        set_director_keys(root, [*kept, key])
        change.new_files[keydir.file("director")] = pem
        change.new_files[keydir.path / "director.pub"] = _public_pem(pem)
        change.retire.append(keydir.file("director"))
        return key
    roles = _ONLINE if role in _ONLINE else (role,)
    for name in roles:
        for old in [keyid] if keyid else list(root.roles[name].keyids):
            if old in root.roles[name].keyids:
                root.revoke_key(old, name)
        root.add_key(key, name)
    if role == "root":
        old_file = keydir.roots / f"{keyid[:16]}.key" if keyid else None
        change.new_files[keydir.roots / f"{key.keyid[:16]}.key"] = pem
        change.new_root_signers[key.keyid] = CryptoSigner(_load(pem))
        if old_file is not None:
            change.retire.append(old_file)
    else:
        change.new_files[keydir.file(role)] = pem
        change.retire.append(keydir.file(role))
    return key


def rotate_key(
    client: redis.Redis | None,
    keys: FleetKeys,
    keydir: KeyDir,
    role: str,
    *,
    replace: str | None = None,
    root_ttl_s: int = ROOT_TTL_S,
) -> Metadata[Root]:
    """A new key for ``role`` (replacing ``replace``, a keyid prefix, or every key of
    the role), in a new root version; returns it, stored."""
    _check_role(role)
    change = _begin(client, keys, keydir, root_ttl_s)
    old_id = _match(change.old.signed, role, replace) if replace else None
    if role == "root" and old_id is None:
        # Every root key at once: as many new ones, same threshold.
        for old in list(change.new.signed.roles["root"].keyids):
            _replace(change, keydir, "root", old)
    else:
        _replace(change, keydir, role, old_id)
    return _commit(client, keys, keydir, change, role)


def revoke_key(
    client: redis.Redis | None,
    keys: FleetKeys,
    keydir: KeyDir,
    role: str,
    keyid: str,
    *,
    root_ttl_s: int = ROOT_TTL_S,
) -> Metadata[Root]:
    """Remove key ``keyid`` (a prefix of 8+ digits) from ``role`` in a new root version.
    Refused when the role would be left with fewer keys than its threshold."""
    _check_role(role)
    change = _begin(client, keys, keydir, root_ttl_s)
    full = _match(change.old.signed, role, keyid)
    root = change.new.signed
    left = len(_keyids(root, role)) - 1
    threshold = 1 if role == "director" else root.roles[role].threshold
    if left < threshold:
        raise ConfigError(
            f"revoking {full[:16]} would leave {role} {left} key(s), below its threshold "
            f"{threshold}: rotate the key instead (`edgeloop keys rotate {role}`)"
        )
    if role == "director":
        set_director_keys(root, [k for i, k in (director_keys(root) or {}).items() if i != full])
    else:
        root.revoke_key(full, role)
    if role == "root":
        change.retire.append(keydir.roots / f"{full[:16]}.key")
    return _commit(client, keys, keydir, change, role)


def _sign(change: RootChange, keydir: KeyDir) -> bytes:
    """Sign the new root with every root key at hand that the old or the new root
    names, and check TUF's chain rule: old threshold and new threshold both met."""
    at_hand = {**keydir.root_signers(), **change.new_root_signers}
    old_ids = set(change.old.signed.roles["root"].keyids)
    new_ids = set(change.new.signed.roles["root"].keyids)
    for keyid, signer in at_hand.items():
        if keyid in old_ids | new_ids:
            change.new.sign(signer, append=True)
    payload = CanonicalJSONSerializer().serialize(change.new.signed)
    for name, root in (("old", change.old.signed), ("new", change.new.signed)):
        try:
            root.verify_delegate("root", payload, change.new.signatures)
        except UnsignedMetadataError as e:
            raise ConfigError(
                f"the new root needs {root.roles['root'].threshold} signatures of the {name} "
                f"root's keys ({e}); the root keys at hand ({keydir.roots}) are not enough"
            ) from e
    return change.new.to_bytes(_SERIALIZER)


def _commit(
    client: redis.Redis | None, keys: FleetKeys, keydir: KeyDir, change: RootChange, role: str
) -> Metadata[Root]:
    data = _sign(change, keydir)
    if client is None:
        # Offline (the air-gapped machine): only files. The signed root travels to
        # the online side (`edgeloop keys publish`), with the new role key if any.
        _put_files(keydir, change)
        keydir.trusted_root.write_bytes(data)
        (keydir.path / f"{change.new.signed.version}.root.json").write_bytes(data)
        return Metadata[Root].from_bytes(data)
    new_online = change.new_files.get(keydir.file("online"))
    online_file = keydir.file("online")
    online = (
        CryptoSigner(_load(new_online))
        if new_online is not None
        else (load_signer(online_file) if online_file.exists() else None)
    )
    new_targets = change.new_files.get(keydir.file("targets"))
    repo = TufRepository(client, keys, TufSigners(online=online))
    # A rotated targets key re-signs targets now; a rotated online key, snapshot and timestamp.
    repo.publish_root(
        data,
        targets_signer=CryptoSigner(_load(new_targets)) if new_targets is not None else None,
        resign_online=new_online is not None or new_targets is not None,
    )
    _put_files(keydir, change)
    keydir.trusted_root.write_bytes(data)
    logger.info("fleet %s: %s key changed, root v%d", keys.fleet, role, change.new.signed.version)
    return Metadata[Root].from_bytes(data)


def _root_file(path: Path) -> Metadata[Root]:
    try:
        return Metadata[Root].from_bytes(path.read_bytes())
    except OSError as e:
        raise ConfigError(f"no root at {path}: {e.strerror}") from e
    except Exception as e:  # the library's DeserializationError and friends
        raise ConfigError(f"{path} is not a TUF root: {e}") from e


def _check_chain(old: Metadata[Root], new: Metadata[Root]) -> None:
    """TUF's rule for the next root: version + 1, old threshold and new threshold met."""
    if new.signed.version != old.signed.version + 1:
        raise ConfigError(
            f"the root to publish is v{new.signed.version}; the fleet's is "
            f"v{old.signed.version}, so it must be v{old.signed.version + 1}"
        )
    payload = CanonicalJSONSerializer().serialize(new.signed)
    for name, root in (("current", old.signed), ("new", new.signed)):
        try:
            root.verify_delegate("root", payload, new.signatures)
        except UnsignedMetadataError as e:
            raise ConfigError(f"the new root is not signed by the {name} root's keys: {e}") from e


def publish_root_file(
    client: redis.Redis,
    keys: FleetKeys,
    root_file: Path,
    *,
    targets_key: Path | None = None,
    online_key: Path | None = None,
) -> Metadata[Root]:
    """Store a root signed offline, after checking that it chains from the fleet's
    current root. A changed targets or online key must come with it (the new key
    file), so that targets, snapshot and timestamp are re-signed in the same step."""
    old = current_root(client, keys)
    new = _root_file(root_file)
    _check_chain(old, new)
    signers: dict[str, CryptoSigner | None] = {
        "targets": load_signer(targets_key) if targets_key else None,
        "snapshot": load_signer(online_key) if online_key else None,
    }
    for role, signer in signers.items():
        wanted = new.signed.roles[role].keyids
        if signer is None and wanted != old.signed.roles[role].keyids:
            option = "--targets-key" if role == "targets" else "--online-key"
            raise ConfigError(f"the new root names a new {role} key: give its file with {option}")
        if signer is not None and signer.public_key.keyid not in wanted:
            raise ConfigError(f"the key given for {role} is not the one the new root names")
    repo = TufRepository(client, keys, TufSigners(online=signers["snapshot"]))
    repo.publish_root(
        new.to_bytes(_SERIALIZER),
        targets_signer=signers["targets"],
        resign_online=signers["snapshot"] is not None,
    )
    return new


def _put_files(keydir: KeyDir, change: RootChange) -> None:
    """Move the replaced key files to ``retired/`` and write the new ones."""
    retired = keydir.path / "retired"
    for path in change.retire:
        if path.exists():
            retired.mkdir(mode=0o700, exist_ok=True)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
            os.replace(path, retired / f"{path.stem}.{stamp}{path.suffix}")
    for path, data in change.new_files.items():
        if path.suffix == ".pub":
            path.write_bytes(data)
        else:
            _write_private(path, data)
