"""What the attacks act on and watch (``AttackFleet``) and what each answers (``AttackResult``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from cloud.demo.stall_proxy import StallProxy
from cloud.registry.devices import Credentials
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.tuf_keys import KeyDir
from cloud.registry.tuf_repo import TufRepository, TufSigners, load_signer
from cloud.registry.versions import Registry
from shared.keys import FleetKeys
from shared.messages import EdgeStatus, SignedManifest
from shared.redis_client import connect_redis
from shared.signing import Signer

logger = logging.getLogger(__name__)

#: How long an attack watches the fleet after acting: several of the edges' polls.
WATCH_S = 2.0


@dataclass(frozen=True)
class AttackResult:
    name: str
    stopped: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "stopped": self.stopped, "detail": self.detail}


@dataclass
class AttackFleet:
    """What the attacks act on and watch. ``client`` is Redis's admin (what an attacker
    holding the fleet's Redis credentials has); keys and key files are the fleet's."""

    client: redis.Redis
    keys: FleetKeys
    model: str
    keydir: KeyDir
    manifest_signer: Signer  # the trainer's manifest key
    registry: Registry
    redis_url: str  # loopback, no credentials: the admin's
    authorized: str  # the sha256 the director orders and the targets list
    health: Callable[[], dict[str, EdgeStatus | None]]
    devices: dict[str, Credentials]
    workdir: Path
    proxy: StallProxy | None = None
    proxied_device: str | None = None
    #: the director's order that the current one replaced (signed, older counter)
    old_order: bytes | None = None
    #: the version that order named (an older, once authorized version)
    old_sha: str | None = None
    #: feedback events the attacks wrote that the trainer must dead-letter
    forged_events: int = 0
    #: what an edge served that neither the director nor the targets named
    violations: list[str] = field(default_factory=list)
    _variant: int = 0
    _before: dict[str, str | None] = field(default_factory=dict)
    _errors: dict[str, list[str]] = field(default_factory=dict)

    # -- the fleet's own tools -------------------------------------------------

    def online(self) -> TufRepository:
        return TufRepository(
            self.client, self.keys, TufSigners(online=load_signer(self.keydir.file("online")))
        )

    def trainer_publisher(self, release: str = "manual") -> Publisher:
        """The trainer's keys (manifest and TUF targets, and the online key as a
        development trainer has it), as a thief of the trainer would use them."""
        repo = TufRepository(
            self.client,
            self.keys,
            TufSigners(
                load_signer(self.keydir.file("targets")), load_signer(self.keydir.file("online"))
            ),
        )
        return Publisher(self.registry, self.manifest_signer, release=release, tuf=repo)  # type: ignore[arg-type]

    def next_variant(self) -> tuple[PublishRequest, bytes]:
        """A new, valid model file (the authorized one padded: same answers, another
        sha256) and its publish request: what an attacker would push is never broken,
        so that only the trust chain stands in its way."""
        self._variant += 1
        signed = SignedManifest.from_wire(
            cast(bytes, self.client.get(self.keys.manifest(self.authorized)))
        )  # type: ignore[arg-type]
        m = signed.manifest()
        content = self.registry.blobs.get(self.authorized) + b"\0" * (64 + self._variant)
        request = PublishRequest(
            m.model,
            content,
            m.num_features,
            m.labels,
            m.probe,
            m.runtime,
            input=m.input,
            task=m.task,
        )
        return request, content

    # -- watching ----------------------------------------------------------------

    def serving(self) -> dict[str, str | None]:
        return {d: (s.sha256 if s else None) for d, s in self.health().items()}

    def mark(self) -> None:
        """Start an attack: the edges' errors from now on are its evidence."""
        self._before = {d: (st.last_error if st else None) for d, st in self.health().items()}
        self._errors = {d: [] for d in self._before}

    def observe(self, what: str) -> dict[str, EdgeStatus | None]:
        """One look at every edge: a version other than the authorized one is a
        violation; a new error is kept as evidence."""
        health = self.health()
        for device, status in health.items():
            if status is None:
                continue
            if status.sha256 is not None and status.sha256 != self.authorized:
                self.violations.append(f"{what}: {device} served {status.sha256[:12]}")
            error = status.last_error
            if error and error != self._before.get(device) and error not in self._errors[device]:
                self._errors.setdefault(device, []).append(error)
        return health

    def reported(self, marker: str, devices: list[str] | None = None) -> bool:
        """Whether every edge (of ``devices``) reported an error containing ``marker``
        since ``mark``."""
        return all(
            any(marker in e for e in self._errors.get(d, [])) for d in devices or self.devices
        )

    def evidence(self, marker: str, devices: list[str] | None = None) -> str:
        first = [e for d in devices or self.devices for e in self._errors.get(d, []) if marker in e]
        return first[0][:200] if first else f"no edge reported {marker!r}"

    def hold(
        self,
        what: str,
        marker: str | None = None,
        seconds: float = WATCH_S,
        timeout: float = 15.0,
        devices: list[str] | None = None,
    ) -> bool:
        """Watch the edges for ``seconds`` and, with ``marker``, until every edge (of
        ``devices``) reported it (at most ``timeout``). True when no edge served
        anything but the authorized version meanwhile and the marker was reported."""
        violations = len(self.violations)
        start = time.monotonic()
        while True:
            self.observe(what)
            done = marker is None or self.reported(marker, devices)
            elapsed = time.monotonic() - start
            if (done and elapsed >= seconds) or elapsed >= max(seconds, timeout):
                return done and len(self.violations) == violations
            time.sleep(0.3)

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.3)
        return predicate()

    def device_client(self, device: str) -> redis.Redis:
        creds = self.devices[device]
        return connect_redis(self.redis_url, username=creds.acl_user, password=creds.password)
