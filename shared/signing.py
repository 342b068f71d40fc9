"""Ed25519 signing of manifests.

The signature covers the exact manifest bytes that travel, never a re-encoding,
so that a newer manifest schema still verifies on an older edge.

>>> private_pem, public_pem = generate_keypair()
>>> sig = Signer(private_pem).sign(b"manifest")
>>> Verifier(public_pem).verify(b"manifest", sig)
>>> Verifier(public_pem).verify(b"tampered", sig)
Traceback (most recent call last):
...
shared.errors.SignatureError: signature does not verify with key ...
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from shared.errors import ConfigError, SignatureError
from shared.messages import Signature


def generate_keypair() -> tuple[bytes, bytes]:
    """A new key pair as (private PEM, public PEM)."""
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def write_keypair(directory: Path, name: str = "signing") -> tuple[Path, Path]:
    """Write ``<name>.key`` (mode 0600) and ``<name>.pub`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    private_pem, public_pem = generate_keypair()
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    if private_path.exists():
        raise ConfigError(f"{private_path} exists; refusing to overwrite a signing key")
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex of its sha256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """Signs bytes with an Ed25519 private key."""

    def __init__(self, private_pem: bytes) -> None:
        try:
            key = serialization.load_pem_private_key(private_pem, password=None)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"signing key does not load: {e}") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError("signing key is not an Ed25519 private key")
        self._key = key
        self.key_id = key_id(key.public_key())

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        try:
            return cls(Path(path).read_bytes())
        except OSError as e:
            raise ConfigError(f"cannot read signing key {path}: {e}") from e

    def public_pem(self) -> bytes:
        """The public half, for a process that checks what it signed itself."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, data: bytes) -> Signature:
        sig = self._key.sign(data)
        return Signature(key_id=self.key_id, value=base64.b64encode(sig).decode("ascii"))


class Verifier:
    """Verifies Ed25519 signatures with one trusted public key."""

    def __init__(self, public_pem: bytes) -> None:
        try:
            key = serialization.load_pem_public_key(public_pem)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"public key does not load: {e}") from e
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError("public key is not an Ed25519 key")
        self._key = key
        self.key_id = key_id(key)

    @classmethod
    def from_file(cls, path: Path) -> Verifier:
        try:
            return cls(Path(path).read_bytes())
        except OSError as e:
            raise ConfigError(f"cannot read public key {path}: {e}") from e

    def verify(self, data: bytes, signature: Signature | None) -> None:
        """Return if ``signature`` signs ``data`` with this key, else raise SignatureError."""
        if signature is None:
            raise SignatureError("unsigned: no signature present")
        if signature.key_id != self.key_id:
            raise SignatureError(
                f"signed by key {signature.key_id}, but this edge trusts key {self.key_id}"
            )
        try:
            raw = base64.b64decode(signature.value, validate=True)
            self._key.verify(raw, data)
        except (ValueError, InvalidSignature) as e:
            raise SignatureError(f"signature does not verify with key {self.key_id}") from e
