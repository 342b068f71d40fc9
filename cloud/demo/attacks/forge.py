"""Forging helpers of the attacks, shared with the tests in ``tests/security``."""

from __future__ import annotations

import json
import logging
from typing import Any, cast

import redis
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, TargetFile, Targets

from cloud.demo.attacks.fleet import AttackFleet
from cloud.registry.tuf_repo import TufRepository, load_signer
from shared.codec import encode_full, sha256_hex
from shared.device_identity import FEEDBACK, DeviceSigner
from shared.keys import FleetKeys
from shared.messages import DeadLetter, DeltaAnnouncement, Payload, SignedManifest
from shared.signing import Signer
from shared.tuf_paths import artifact_path

logger = logging.getLogger(__name__)


def signed_variant(
    fleet: AttackFleet, version: int, signer: Signer | None
) -> tuple[str, SignedManifest, bytes]:
    """A valid model file with a manifest claiming ``version``, signed by ``signer``
    (None: unsigned), written to the fleet's manifest and artifact keys as a
    publisher would; (sha256, manifest, stored artifact)."""
    request, content = fleet.next_variant()
    sha = sha256_hex(content)
    manifest = request.manifest(sha, None).model_copy(update={"version": version})
    text = manifest.model_dump_json()
    signed = SignedManifest(
        manifest_json=text, signature=signer.sign(text.encode()) if signer else None
    )
    blob = encode_full(content, level=3)
    fleet.client.set(fleet.keys.manifest(sha), signed.to_wire())
    fleet.client.set(fleet.keys.artifact(sha), blob)
    return sha, signed, blob


def announce(fleet: AttackFleet, sha: str, version: int, blob: bytes) -> None:
    ann = DeltaAnnouncement(
        model=fleet.model,
        version=version,
        sha256=sha,
        manifest_key=fleet.keys.manifest(sha),
        payloads=[Payload(encoding="full", key=fleet.keys.artifact(sha), size=len(blob))],
    )
    fleet.client.xadd(fleet.keys.deltas, {"data": ann.to_wire()})


def forge_targets(
    client: redis.Redis,
    keys: FleetKeys,
    signer: CryptoSigner,
    content: bytes,
    online: TufRepository | None,
) -> int:
    """Targets listing ``content`` signed by ``signer`` (a key the root does not name),
    one version above the stored targets, written to Redis; with ``online`` (an
    attacker who holds the online key too) snapshot and timestamp are re-signed over
    it, so that edges fetch it. The forged targets version."""
    key = keys.tuf_metadata("targets.json")
    targets = Metadata[Targets].from_bytes(bytes(client.get(key)))  # type: ignore[arg-type]
    tf = TargetFile.from_data(artifact_path(sha256_hex(content)), content, ["sha256"])
    targets.signed.targets[tf.path] = tf
    targets.signed.version += 1
    targets.sign(signer)
    client.set(key, targets.to_bytes())
    client.set(keys.artifact(sha256_hex(content)), content)
    if online is not None:
        online.refresh()
    return int(targets.signed.version)


def restore_targets(fleet: AttackFleet, saved: bytes, above: int) -> None:
    """Put the fleet's own targets back, re-signed by its targets key one version
    above ``above`` (a version the edges may have seen named in a snapshot), and
    re-sign snapshot and timestamp over them."""
    targets = Metadata[Targets].from_bytes(saved)
    targets.signed.version = above + 1
    targets.signatures.clear()
    targets.sign(load_signer(fleet.keydir.file("targets")))
    fleet.client.set(fleet.keys.tuf_metadata("targets.json"), targets.to_bytes())
    fleet.online().refresh()


def feedback_fields(
    fleet: str, claimed: str, private_pem: bytes | None, events: list[dict[str, Any]]
) -> dict[Any, Any]:
    """A feedback stream entry of ``events`` claiming device ``claimed``, signed with
    ``private_pem`` (None: unsigned), as an edge's uplink writes one."""
    body = b"\n".join(json.dumps(e).encode() for e in events)
    if private_pem is None:
        return {"events": body}
    return {"events": body, **DeviceSigner(fleet, claimed, private_pem).fields(FEEDBACK, body)}


def dead_letters(client: redis.Redis, keys: FleetKeys, since: str = "-") -> list[DeadLetter]:
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]], client.xrange(keys.deadletter, min=since)
    )
    return [DeadLetter.from_wire(f[b"data"]) for _, f in entries]


def last_id(client: redis.Redis, stream: str) -> str:
    last = client.xrevrange(stream, count=1)
    if not last:
        return "0-0"
    ms, seq = cast(list[tuple[bytes, Any]], last)[0][0].decode().split("-")
    return f"{ms}-{int(seq) + 1}"


def event(fleet: AttackFleet, device: str, n: int, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"{device}:forged:{n}",
        "device_id": device,
        "model": fleet.model,
        "x": [0.0] * 64,
        "label": n % 10,
        **extra,
    }
