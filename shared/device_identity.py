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

import time
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel

from shared.errors import ConfigError, SignatureError
from shared.keys import FleetKeys, check_name

#: What a signature is for (its domain tag).
FEEDBACK = "feedback"
STATUS = "status"

#: Stream entry fields an enrolled device adds next to its payload field.
DEVICE_FIELD = "device"
SIG_FIELD = "sig"


def payload_bytes(purpose: str, fleet: str, device_id: str, payload: bytes) -> bytes:
    """The bytes a device signs: ``edgeloop/<purpose>\\n<fleet>\\n<device>\\n`` + payload."""
    head = (
        f"edgeloop/{purpose}\n{check_name('fleet', fleet)}\n{check_name('device id', device_id)}\n"
    )
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


class EnrolledDevice(BaseModel):
    """A device registry entry (``FleetKeys.device_registry``): never the private key."""

    device_id: str
    acl_user: str
    public_key: str
    enrolled_at: float


class DeviceKeyring:
    """The enrolled devices' public keys as the trainer and the rollout gates check them.

    The registry is re-read at most every ``refresh_s`` seconds: a revoked device's
    entries are refused from then on (its Redis user is gone at once anyway).
    Development rule: while the fleet has no enrolled device, ``enforcing`` is False and
    unsigned writes are accepted; from the first enrolment on, only signed ones are.
    """

    def __init__(
        self,
        client: Any,
        keys: FleetKeys,
        refresh_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.keys, self.refresh_s, self.clock = client, keys, refresh_s, clock
        self._verifiers: dict[str, DeviceVerifier] = {}
        self._pems: dict[str, str] = {}
        self._read_at: float | None = None

    def _refresh(self) -> None:
        now = self.clock()
        if self._read_at is not None and now - self._read_at < self.refresh_s:
            return
        raw = self.client.hgetall(self.keys.device_registry)
        pems: dict[str, str] = {}
        for k, v in raw.items():
            device = k.decode() if isinstance(k, bytes) else str(k)
            try:
                pems[device] = EnrolledDevice.model_validate_json(v).public_key
            except ValueError:
                continue  # an unreadable entry enrolls nobody
        verifiers: dict[str, DeviceVerifier] = {}
        for d, pem in pems.items():
            known = self._verifiers.get(d)
            if known is not None and self._pems.get(d) == pem:
                verifiers[d] = known
                continue
            try:
                verifiers[d] = device_verifier(pem.encode())
            except ConfigError:
                continue  # a key that does not load verifies nothing
        self._verifiers, self._pems, self._read_at = verifiers, pems, now

    @property
    def enforcing(self) -> bool:
        self._refresh()
        return bool(self._pems)

    def check(
        self, purpose: str, device_id: str | None, payload: bytes, sig: bytes | None
    ) -> str | None:
        """None if ``sig`` is ``device_id``'s signature of ``payload``, else why not."""
        if not device_id:
            return "unsigned: no device id on the entry (the fleet has enrolled devices)"
        self._refresh()
        verifier = self._verifiers.get(device_id)
        if verifier is None:
            return f"device {device_id!r} is not enrolled"
        try:
            verifier.verify(payload_bytes(purpose, self.keys.fleet, device_id, payload), sig)
        except (SignatureError, ValueError) as e:
            return f"device {device_id!r}: {e}"
        return None
