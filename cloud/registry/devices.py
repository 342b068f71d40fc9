"""Per-device identity: each enrolled device has its own Redis ACL user and Ed25519 key.

``DeviceRegistry.enroll`` creates the device's Redis user on the live server
(``ACL SETUSER``) with a generated password, restricted to the keys the device needs
(``device_rules``), and a key pair whose public half it stores in the fleet's device
registry; it returns the credentials once, for the operator to copy to the device.
``revoke`` deletes the user (its open connections are closed by Redis) and the key.

What Redis itself enforces for a device: it writes only its own latest-status key
(``device:<id>``), appends to the fleet's feedback and status streams, adds to the
``devices`` index, and reads announcements, manifests, artifacts, patches and targets;
no scripting (``-@scripting``), no key of another device, no registry, no admin
command. What Redis cannot enforce: the contents of a stream entry, hence the device's
signature on each entry (``shared.device_identity``), checked by the trainer's ingest and
the rollout gates; and the size of an ``XADD`` (ACL rules cannot require ``MAXLEN``):
see docs/ARCHITECTURE.md, "Per-device identity", for what bounds a hostile device.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from shared.device_identity import DeviceVerifier, EnrolledDevice, device_verifier
from shared.errors import EdgeloopError
from shared.keys import FleetKeys, check_name
from shared.signing import generate_keypair

#: Placeholder password hash in generated ACL files (replace before loading).
PLACEHOLDER_HASH = "#" + "0" * 64


class DeviceNotEnrolled(EdgeloopError):
    """The device id is not in the fleet's device registry."""


class DeviceAlreadyEnrolled(EdgeloopError):
    """The device id is enrolled already; revoke it first to enroll it again."""


@dataclass(frozen=True)
class Credentials:
    """What the device needs, printed or written once: never stored by the cloud."""

    fleet: str
    device_id: str
    acl_user: str
    password: str
    private_key: bytes
    public_key: bytes


def device_rules(keys: FleetKeys, device_id: str) -> list[str]:
    """ACL rules (after ``reset``) of one device's Redis user.

    >>> " ".join(device_rules(FleetKeys("lab"), "pi-07"))[:60]
    'resetchannels resetkeys -@all +ping +hello +auth +multi +exe'
    """
    return _edge_rules(keys, keys.device(device_id))


def _edge_rules(keys: FleetKeys, device_pattern: str) -> list[str]:
    p = f"el:{{{keys.fleet}}}"
    return [
        "resetchannels",
        "resetkeys",
        "-@all",
        # MULTI/EXEC: the uplink's atomic multi-entry append when scripting is refused
        "+ping", "+hello", "+auth", "+multi", "+exec", "+discard",
        # A Redis Cluster client reads which node holds which slot (a single server
        # answers with an error, harmless) and the command table (where a command's keys are).
        "+cluster|slots", "+command",
        # feedback_wait_replicas: the uplink's WAIT for a replica's copy (no key, no data)
        "+wait",
        # Appends only; a device never reads or trims the shared streams.
        f"%W~{p}:feedback", f"%W~{p}:feedback:*", f"%W~{p}:status", "+xadd",
        # Its own latest status and nothing of any other device.
        f"(+set +get ~{device_pattern} ~{device_pattern.replace(':device:', ':device-sig:')})",
        f"(+zadd %W~{keys.devices})",
        f"(+xread +xrevrange %R~{keys.deltas})",
        f"(+get +hget +hmget +strlen +getrange %R~{p}:manifest:* %R~{p}:artifact:* "
        f"%R~{p}:patch:* %R~{p}:target:* %R~{p}:assign:* %R~{p}:pins:* "
        f"%R~{p}:tuf:* %R~{p}:director:*)",
        "-@scripting",
    ]  # fmt: skip


#: Key families the trainer writes: what a round reads, learns from and publishes.
_TRAINER_WRITES = (
    "feedback", "seen", "replay", "holdout", "recent", "trainer", "trainer-lock", "versions",
    "version-records", "labels", "artifact", "patch", "manifest", "weights",
    # limits against poisoning: waiting samples, device tags, label checks, quarantine
    "pending", "pending-devices", "device-tags", "recent-devices", "agreement", "quarantine",
    "quarantined",
)  # fmt: skip


def trainer_rules(fleets: Iterable[str]) -> list[str]:
    """ACL rules of the ``trainer`` user for ``fleets``: it may publish versions, it may
    not decide what devices run.

    It reads and writes what a round needs (feedback streams and their watermarks, the
    replay buffer, its lease and state, the registry, artifacts, patches, manifests and
    weights, the announcements, and the TUF ``targets``/``snapshot``/``timestamp``
    files a publish signs); it only reads the TUF root, the devices' statuses (bases for
    patches), the device registry (feedback signatures), the fleet's target, whether a
    rollout is active (a publish WATCHes it) and where collected versions' manifests went. Nothing else of the fleet is a key it may
    touch: not ``target``, ``assign``, ``pins``, ``director``, ``director_counter``,
    ``rollout``, ``rollouts``, ``active-rollout`` (writes), nor the tokens.

    >>> rules = trainer_rules(["lab"])
    >>> "~el:{lab}:pins:*" in rules, "%R~el:{lab}:target:*" in rules
    (False, True)
    """
    rules = ["resetkeys"]
    for fleet in dict.fromkeys(check_name("fleet", f) for f in fleets):
        keys = FleetKeys(fleet)
        rules += [f"~{keys.family(name)}" for name in _TRAINER_WRITES]
        rules += [f"~{k}" for k in (keys.feedback, keys.deadletter, keys.seen, keys.models)]
        rules += [f"~{keys.deltas}"]
        rules += [
            f"~{keys.tuf_metadata(n)}" for n in ("targets.json", "snapshot.json", "timestamp.json")
        ]
        rules += [
            f"%R~{keys.family(name)}" for name in ("tuf", "device", "target", "active-rollout")
        ]
        rules += [f"%R~{k}" for k in (keys.devices, keys.device_registry)]
        rules += [f"%R~{keys.manifest_archive}"]  # collected versions' manifests (collect.py)
    return [*rules, "+@all", "-@dangerous"]


def service_lines(fleets: Iterable[str]) -> list[str]:
    """The service users of one Redis serving ``fleets``, one ACL file line each; the
    development ``edge`` user becomes ``edge~<fleet>`` per fleet so no name repeats
    (``~``: a name part never has one, and a URL carries it as it is)."""
    fleets = list(dict.fromkeys(check_name("fleet", f) for f in fleets))
    patterns = " ".join(f"~el:{{{f}}}:*" for f in fleets)
    lines = [
        "user default off",
        f"user admin on {PLACEHOLDER_HASH} ~* &* +@all",
        f"user trainer on {PLACEHOLDER_HASH} {' '.join(trainer_rules(fleets))}",
        f"user api on {PLACEHOLDER_HASH} {patterns} +@all -@dangerous",
    ]
    for f in fleets:
        rules = " ".join(_edge_rules(FleetKeys(f), f"el:{{{f}}}:device:*"))
        lines.append(f"user edge~{f} on {PLACEHOLDER_HASH} {rules}")
    return lines


class DeviceRegistry:
    """A fleet's enrolled devices, their Redis users and public keys."""

    def __init__(self, client: redis.Redis, keys: FleetKeys) -> None:
        self.client, self.keys = client, keys
        self._verifiers: dict[str, tuple[str, DeviceVerifier]] = {}

    def enroll(self, device_id: str) -> Credentials:
        check_name("device id", device_id)
        if self.client.hexists(self.keys.device_registry, device_id):
            raise DeviceAlreadyEnrolled(
                f"device {device_id!r} is enrolled in fleet {self.keys.fleet!r}; "
                "revoke it first (`edgeloop device revoke`)"
            )
        user = self.keys.device_user(device_id)
        password = secrets.token_urlsafe(32)
        private_pem, public_pem = generate_keypair()
        self.client.acl_setuser(user, reset=True)  # a stale user of that name goes
        self.client.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", user, "on", f">{password}", *device_rules(self.keys, device_id)
        )
        record = EnrolledDevice(
            device_id=device_id,
            acl_user=user,
            public_key=public_pem.decode(),
            enrolled_at=time.time(),
        )
        self.client.hset(self.keys.device_registry, device_id, record.model_dump_json())
        self._save_acl()
        return Credentials(self.keys.fleet, device_id, user, password, private_pem, public_pem)

    def revoke(self, device_id: str) -> EnrolledDevice:
        record = self.get(device_id)
        self.client.acl_deluser(record.acl_user)
        self.client.hdel(self.keys.device_registry, device_id)
        self._save_acl()
        return record

    def get(self, device_id: str) -> EnrolledDevice:
        raw = self.client.hget(self.keys.device_registry, device_id)
        if raw is None:
            raise DeviceNotEnrolled(
                f"device {device_id!r} is not enrolled in fleet {self.keys.fleet!r}"
            )
        return EnrolledDevice.model_validate_json(raw)

    def list(self) -> list[EnrolledDevice]:
        raw: dict[Any, Any] = self.client.hgetall(self.keys.device_registry)  # type: ignore[assignment]
        records = [EnrolledDevice.model_validate_json(v) for v in raw.values()]
        return sorted(records, key=lambda r: r.device_id)

    def any_enrolled(self) -> bool:
        """False in development fleets without enrolled devices: unsigned edges work."""
        return bool(self.client.hlen(self.keys.device_registry))

    def verifier(self, device_id: str) -> DeviceVerifier:
        """The enrolled device's verifier (cached per public key; a revoked or re-enrolled
        device is looked up again)."""
        record = self.get(device_id)
        cached = self._verifiers.get(device_id)
        if cached is None or cached[0] != record.public_key:
            cached = (record.public_key, device_verifier(record.public_key.encode()))
            self._verifiers[device_id] = cached
        return cached[1]

    def _save_acl(self) -> None:
        # A Redis started with --aclfile keeps the users across restarts only once saved;
        # without an ACL file the users live in the running server (and redis.conf).
        with contextlib.suppress(redis.ResponseError):
            self.client.execute_command(  # type: ignore[no-untyped-call]
                "ACL", "SAVE"
            )
