"""Helpers for the edge tests: model files, signed manifests, and publishing a
version to Redis the way the cloud's publisher does (manifest and artifact keys
first, then an announcement on the fleet's delta stream). What other tests share
with these (signing keys, settings, waiting, reading a feedback stream) is in
tests/serving.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import redis

from edge.settings import BUNDLED_BASELINE
from shared.codec import encode_full, sha256_hex
from shared.keys import FleetKeys
from shared.messages import (
    DeltaAnnouncement,
    ModelManifest,
    Payload,
    ProbeSet,
    SignedManifest,
)
from shared.rollouts import AssignmentNotice
from shared.runtime import TFLiteModel
from shared.signing import Signer
from shared.tensors import DTYPES
from tests.serving import stream_frames

DATA = Path(__file__).resolve().parent / "data"
FLOAT_MODEL = DATA / "float_digits.tflite"
DYNAMIC_MODEL = DATA / "dynamic_digits.tflite"
FLOAT_16_FEATURES = DATA / "float_16features.tflite"
#: Valid, signed-off-able, and wrong: the digits CNN answering (true + 1) % 10.
PERMUTED_MODEL = DATA / "permuted_digits.tflite"
#: Real labeled digits (x, y), so that edge tests can send feedback without scikit-learn.
DIGITS_SAMPLE = DATA / "digits_sample.npz"
LABELS = [str(i) for i in range(10)]


def baseline_bytes() -> bytes:
    return BUNDLED_BASELINE.read_bytes()


def variant(n: int) -> bytes:
    """A distinct, valid model file: the baseline with ``n`` padding bytes after
    the flatbuffer, which TFLite ignores. Same answers, a different sha256."""
    return baseline_bytes() + b"\0" * n


def same_size_variant(n: int, pad: int = 256) -> bytes:
    """Like ``variant`` but of one length for every ``n`` (a few padding bytes
    differ), so that one is a patch away from another."""
    padding = bytearray(pad)
    for i in range(0, pad, 37):
        padding[i] = n % 256
    return baseline_bytes() + bytes(padding)


def digit_inputs(n: int, seed: int = 0) -> np.ndarray:
    """``n`` samples shaped like sklearn's digits: 64 pixel values in 0..16."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 17, size=(n, 64)).astype(np.float32)


def probe_for(model_bytes: bytes, n: int = 8, seed: int = 0) -> ProbeSet:
    """The probe a publisher would attach: the model's own outputs on a few inputs."""
    inputs = digit_inputs(n, seed)
    expected = TFLiteModel(model_bytes).predict_proba_batch(inputs)
    return ProbeSet(inputs=inputs.tolist(), expected=expected.tolist())


def make_manifest(
    model_bytes: bytes, version: int, *, model: str = "digits", **fields: Any
) -> ModelManifest:
    values: dict[str, Any] = {
        "model": model,
        "version": version,
        "sha256": sha256_hex(model_bytes),
        "size": len(model_bytes),
        "num_features": 64,
        "labels": LABELS,
        "runtime": "ai-edge-litert (tests)",
    }
    values.update(fields)
    if "probe" not in values:
        values["probe"] = probe_for(model_bytes)
    return ModelManifest(**values)


def sign(signer: Signer | None, manifest: ModelManifest) -> SignedManifest:
    text = manifest.model_dump_json()
    signature = signer.sign(text.encode()) if signer is not None else None
    return SignedManifest(manifest_json=text, signature=signature)


def publish_version(
    client: redis.Redis,
    keys: FleetKeys,
    signer: Signer | None,
    model_bytes: bytes,
    version: int,
    *,
    model: str = "digits",
    manifest: ModelManifest | None = None,
    signed: SignedManifest | None = None,
    artifact: bytes | None = None,
    announce_sha: str | None = None,
    patches: dict[str, bytes | None] | None = None,
) -> DeltaAnnouncement:
    """Write manifest and artifact keys, then XADD the announcement; return it.

    ``manifest``/``signed``/``artifact`` override what is written, to publish
    something broken on purpose; ``announce_sha`` makes the announcement name
    another hash than the file's. ``patches`` maps a base sha256 to the patch
    bytes listed for it (None: listed, but the key is never written).
    """
    manifest = manifest or make_manifest(model_bytes, version, model=model)
    signed = signed or sign(signer, manifest)
    sha = manifest.sha256
    blob = artifact if artifact is not None else encode_full(model_bytes, level=3)
    client.set(keys.manifest(sha), signed.to_wire())
    client.set(keys.artifact(sha), blob)
    payloads = [Payload(encoding="full", key=keys.artifact(sha), size=len(blob))]
    for base, patch in (patches or {}).items():
        key = keys.patch(base, sha)
        if patch is not None:
            client.set(key, patch)
        payloads.append(
            Payload(encoding="patch", key=key, size=len(patch or b""), base_sha256=base)
        )
    ann = DeltaAnnouncement(
        model=model,
        version=version,
        sha256=announce_sha or sha,
        manifest_key=keys.manifest(sha),
        payloads=payloads,
    )
    client.xadd(keys.deltas, {"data": ann.to_wire()})
    return ann


def labeled_digits() -> tuple[np.ndarray, np.ndarray]:
    """(x float32 [n, 64], y int64 [n]) from ``DIGITS_SAMPLE``."""
    with np.load(DIGITS_SAMPLE, allow_pickle=False) as d:
        return d["x"], d["y"]


def desire(
    client: redis.Redis,
    keys: FleetKeys,
    *,
    target: str | None = None,
    assign: dict[str, str | None] | None = None,
    pin: dict[str, str | None] | None = None,
    notify: bool = True,
    model: str = "digits",
) -> None:
    """Change what devices should serve, as the publisher and the rollout
    controller do: the fleet ``target``, per-device ``assign``ments and ``pin``s
    (None removes one), then an assignment notice on the delta stream unless
    ``notify`` is false (a lost notice)."""
    if target is not None:
        client.set(keys.target(model), target)
    for key, changes in ((keys.assignments(model), assign), (keys.pins(model), pin)):
        for device, sha in (changes or {}).items():
            if sha is None:
                client.hdel(key, device)
            else:
                client.hset(key, device, sha)
    if notify:
        devices = sorted({*(assign or {}), *(pin or {})}) if target is None else []
        notice = AssignmentNotice(model=model, devices=devices)
        client.xadd(keys.deltas, {"assign": notice.to_wire()})


def stream_events(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    """The FeedbackEvent JSON of every event of ``stream``, in stream order, with the
    sample's values of a frame put back as ``x`` (a flat list)."""
    out = []
    for event, sample in stream_frames(client, stream):
        if event.get("x_dtype") is not None:
            event["x"] = np.frombuffer(sample, DTYPES[event["x_dtype"]]).tolist()
        out.append(event)
    return out
