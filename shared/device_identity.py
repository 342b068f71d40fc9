"""Per-device signatures on what an edge writes: feedback entries and status reports.

An enrolled device holds its own Ed25519 key (``edgeloop device enroll``); the cloud
keeps the public half in the fleet's device registry (``FleetKeys.device_registry``).
The signature covers a domain tag, the fleet, the device id and the exact payload bytes,
so a status signature cannot be replayed as feedback, nor one fleet's entry in another,
nor one device's bytes under another device id.

Feedback is signed per stream entry, not per event: an entry carries a batch of events
(``shared.feedback_stream``), so the 64 signature bytes and the device id are spread over
every event of the batch (a few bytes per event at the uplink's batch sizes) instead of
adding 64 bytes to each event of a few hundred bytes.

>>> from shared.signing import generate_keypair
>>> private_pem, public_pem = generate_keypair()
>>> sig = DeviceSigner("lab", "pi-07", private_pem).sign(FEEDBACK, b"events")
>>> device_verifier(public_pem).verify(payload_bytes(FEEDBACK, "lab", "pi-07", b"events"), sig)
>>> len(sig)
64
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from shared.errors import ConfigError, SignatureError
from shared.keys import check_name

#: What a signature is for (its domain tag).
FEEDBACK = "feedback"
STATUS = "status"

#: Stream entry fields an enrolled device adds next to its payload field.
DEVICE_FIELD = "device"
SIG_FIELD = "sig"


def payload_bytes(purpose: str, fleet: str, device_id: str, payload: bytes) -> bytes:
    """The bytes a device signs: ``edgeloop/<purpose>\\n<fleet>\\n<device>\\n`` + payload."""
    head = f"edgeloop/{purpose}\n{check_name('fleet', fleet)}\n{check_name('device id', device_id)}\n"
    return head.encode() + payload


class DeviceSigner:
    """Signs one device's feedback entries and status reports."""

    def __init__(self, fleet: str, device_id: str, private_pem: bytes) -> None:
        try:
            key = serialization.load_pem_private_key(private_pem, password=None)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"device key does not load: {e}") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError("device key is not an Ed25519 private key")
        self.fleet, self.device_id, self._key = fleet, device_id, key

    def sign(self, purpose: str, payload: bytes) -> bytes:
        """The raw 64-byte signature of ``payload`` for ``purpose``."""
        return self._key.sign(payload_bytes(purpose, self.fleet, self.device_id, payload))

    def fields(self, purpose: str, payload: bytes) -> dict[str, bytes]:
        """The stream fields that sign ``payload``: the device id and the signature."""
        return {DEVICE_FIELD: self.device_id.encode(), SIG_FIELD: self.sign(purpose, payload)}


class DeviceVerifier:
    """Verifies one enrolled device's raw signatures."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key

    def verify(self, data: bytes, signature: bytes | None) -> None:
        if not signature:
            raise SignatureError("unsigned: the device's signature is missing")
        try:
            self._key.verify(signature, data)
        except InvalidSignature as e:
            raise SignatureError("signature does not verify with the device's key") from e


def device_verifier(public_pem: bytes) -> DeviceVerifier:
    try:
        key = serialization.load_pem_public_key(public_pem)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"device public key does not load: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("device public key is not an Ed25519 key")
    return DeviceVerifier(key)
