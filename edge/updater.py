"""The update consumer: follows the fleet's delta stream and hot-swaps verified models.

Every edge reads every announcement with plain XREAD from the last id it kept
(in the model store's state). A new edge, with no last id, reads the newest
announcements with XREVRANGE and converges at once instead of replaying history.

An announcement is only a hint. The signed manifest is the authority: its
signature is verified before anything in it is believed, then the file must hash
to the manifest's sha256, load in this runtime, be static int8, have the
manifest's shape and reproduce the manifest's probe outputs. Only then is it
installed (atomically) and swapped in. Any failure is one log line, a count in
``updates_refused`` and ``last_error``; the old model keeps serving. A Redis
outage is not a refusal: the read is retried with backoff and the stream
position is not advanced past an announcement that could not be fetched.

Payloads: when the announcement lists a ``patch`` whose base is the version
this edge serves, the edge fetches it and applies it to that version's bytes
from the model store (re-hashed when read; ``apply_patch`` checks the base hash
before and the target hash after). Any patch failure (missing key, another
base, corrupt or truncated patch, wrong result) is one log line and a count in
``patch_failures``, and the edge fetches the ``full`` payload instead. Either
way the file is whole in memory and verified before ``ModelStore.install``
writes it atomically, so a truncated or interrupted download never leaves a
half-written model in use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edge.connections import REDIS_ERRORS, connect, describe
from edge.fallback import ServingChain
from edge.model_store import ModelStore
from edge.runtime import TFLiteModel
from shared.codec import check_sha256, decode_full
from shared.delta import apply_patch
from shared.errors import ArtifactError, EdgeloopError, IntegrityError, ModelRejected, NotFound
from shared.keys import FleetKeys
from shared.messages import DeltaAnnouncement, ModelManifest, Payload, SignedManifest
from shared.retry import Backoff
from shared.signing import Verifier

logger = logging.getLogger(__name__)

#: How far back a new edge looks for an announcement of its model.
CONVERGE_SCAN = 200


def materialize(payload: Payload, blob: bytes, base: bytes | None, max_size: int) -> bytes:
    """The model file a payload describes.

    ``full`` payloads are zstd frames. ``patch`` payloads (``shared.delta``) apply
    to ``base``, the bytes of the version named by ``payload.base_sha256``.
    """
    if payload.encoding == "full":
        return decode_full(blob, max_size)
    if payload.encoding == "patch":
        if base is None:
            raise ArtifactError("a patch payload needs the bytes of its base")
        return apply_patch(base, blob, max_size)
    raise ArtifactError(f"{payload.encoding} payloads are not supported by this edge")


class UpdateConsumer:
    """A thread that turns announcements into swaps; see the module docstring."""

    def __init__(
        self,
        *,
        redis_url: str,
        keys: FleetKeys,
        model: str,
        store: ModelStore,
        chain: ServingChain,
        verifier: Verifier,
        max_artifact_bytes: int,
        runtime: str | None = None,
        num_threads: int = 1,
        warmup_invokes: int = 3,
        block_ms: int = 250,
        on_swap: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self._redis = connect(redis_url, socket_timeout=block_ms / 1000.0 + 5.0)
        self._keys, self._model = keys, model
        self._store, self._chain, self._verifier = store, chain, verifier
        self._max_size = max_artifact_bytes
        self._runtime, self._num_threads, self._warmup = runtime, num_threads, warmup_invokes
        self._block_ms = block_ms
        self._on_swap = on_swap
        self._backoff = backoff or Backoff(base=0.2, cap=10.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgeloop-updater", daemon=True)
        self.swaps = 0
        self.updates_refused = 0
        self.bytes_downloaded = 0
        self.patches_applied = 0
        self.full_downloads = 0
        self.patch_failures = 0
        self.last_error: str | None = None
        self.last_error_at = 0.0

    # -- thread -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current read: at most ``block_ms``, which is kept short
        for this (a blocked XREAD cannot be interrupted from another thread)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._redis.close()

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                self.poll()
                attempt = 0
            except REDIS_ERRORS as e:
                if attempt == 0:
                    logger.warning(
                        "updater: Redis unreachable (%s); retrying with backoff", describe(e)
                    )
                self._error(f"updater: {describe(e)}")
                self._stop.wait(self._backoff.delay(attempt))
                attempt += 1
            except Exception as e:  # the thread must outlive any one bad announcement
                logger.exception("updater: unexpected error")
                self._error(f"updater: {type(e).__name__}: {e}")
                self._stop.wait(1.0)

    def poll(self) -> None:
        """Read (blocking up to block_ms) and handle what the stream has for us."""
        last_id = self._store.deltas_last_id
        if last_id is None:
            self._converge()
            return
        resp: Any = self._redis.xread({self._keys.deltas: last_id}, count=100, block=self._block_ms)
        if not resp:
            return
        entries = _entries(resp[0][1])
        self._apply_newest(entries)
        self._store.set_deltas_last_id(entries[-1][0])

    def _converge(self) -> None:
        """First start: apply the newest good announcement, then follow from the stream's end."""
        newest_first = _entries(self._redis.xrevrange(self._keys.deltas, count=CONVERGE_SCAN))
        if newest_first:
            self._apply_newest(newest_first[::-1])
        self._store.set_deltas_last_id(newest_first[0][0] if newest_first else "0-0")

    def _apply_newest(self, entries: list[Entry]) -> None:
        """Of announcements in stream order, apply the newest one that passes.

        Older ones in the same read are superseded; they are tried only when a
        newer one is refused, so the edge converges on the newest good version.
        """
        candidates = [
            a for a in (self._parse(eid, fields) for eid, fields in entries) if a is not None
        ]
        for ann in reversed(candidates):
            if self.apply(ann):
                return

    def _parse(self, entry_id: str, fields: dict[bytes, bytes]) -> DeltaAnnouncement | None:
        raw = fields.get(b"data")
        try:
            if raw is None:
                raise ArtifactError("entry has no 'data' field")
            ann = DeltaAnnouncement.from_wire(raw)
        except EdgeloopError as e:
            self._refuse(f"announcement {entry_id}", e)
            return None
        return ann if ann.model == self._model else None

    # -- one announcement ---------------------------------------------------

    def apply(self, ann: DeltaAnnouncement) -> bool:
        """Verify, check and swap in ``ann``'s version. True when it is now
        served (or already was); False when refused. Redis errors propagate."""
        current = self._chain.current
        if current is not None and current.sha256 == ann.sha256:
            logger.debug("updater: already serving %s v%d", ann.model, ann.version)
            return True
        what = f"{ann.model} v{ann.version} ({ann.sha256[:12]})"
        started = time.perf_counter()
        try:
            signed, manifest = self._fetch_manifest(ann)
            data = self._fetch_model(ann, manifest)
            model = self._build(data, manifest)
        except EdgeloopError as e:
            self._refuse(what, e)
            return False
        try:
            self._store.install(
                data,
                signed,
                last_known_good=current.sha256 if current else self._store.last_known_good,
            )
        except OSError as e:
            self._refuse(what, e)
            return False
        self._chain.swap(model)
        self.swaps += 1
        logger.info(
            "serving %s, was %s; verified and swapped in %.0f ms",
            what,
            f"v{current.version}" if current else "no model",
            (time.perf_counter() - started) * 1000,
        )
        if self._on_swap is not None:
            self._on_swap()
        return True

    def _fetch_manifest(self, ann: DeltaAnnouncement) -> tuple[SignedManifest, ModelManifest]:
        raw = self._get(ann.manifest_key)
        if raw is None:
            raise NotFound(f"manifest {ann.manifest_key} is not in Redis")
        signed = SignedManifest.from_wire(raw)
        # Verify before believing a single field of the manifest.
        self._verifier.verify(signed.manifest_json.encode("utf-8"), signed.signature)
        manifest = signed.manifest()
        if manifest.sha256 != ann.sha256 or manifest.model != self._model:
            raise IntegrityError(
                f"the signed manifest describes {manifest.model} {manifest.sha256[:12]}, "
                f"not the announced {ann.model} {ann.sha256[:12]}"
            )
        return signed, manifest

    def _fetch_model(self, ann: DeltaAnnouncement, manifest: ModelManifest) -> bytes:
        current = self._chain.current
        patch = ann.patch_from(current.sha256 if current else None)
        if patch is not None and current is not None:
            try:
                base = self._store.load(current.sha256).data
                data = self._fetch_payload(patch, manifest, base)
            except EdgeloopError as e:
                self.patch_failures += 1
                logger.warning(
                    "updater: patch v%d -> v%d refused (%s); fetching the full file",
                    current.version or 0,
                    manifest.version,
                    e,
                )
            else:
                self.patches_applied += 1
                return data
        data = self._fetch_payload(ann.full_payload(), manifest, None)
        self.full_downloads += 1
        return data

    def _fetch_payload(
        self, payload: Payload, manifest: ModelManifest, base: bytes | None
    ) -> bytes:
        blob = self._get(payload.key)
        if blob is None:
            raise NotFound(f"payload {payload.key} is not in Redis")
        self.bytes_downloaded += len(blob)
        data = materialize(payload, blob, base, self._max_size)
        if len(data) != manifest.size:
            raise IntegrityError(
                f"model file is {len(data)} bytes, the manifest says {manifest.size}"
            )
        check_sha256(data, manifest.sha256, what="model file")
        return data

    def _build(self, data: bytes, manifest: ModelManifest) -> TFLiteModel:
        """Load, check and warm a model off the request path."""
        model = TFLiteModel(
            data,
            version=manifest.version,
            name=f"{manifest.model} v{manifest.version}",
            num_threads=self._num_threads,
            runtime=self._runtime,
        )
        if not model.heavy_ops_int8():
            raise ModelRejected(
                f"{model.name} has float compute ops (a float or dynamic-range model); "
                "edges serve static int8 models only"
            )
        if model.num_features != manifest.num_features or model.num_classes != len(manifest.labels):
            raise ModelRejected(
                f"{model.name} maps {model.num_features} features to {model.num_classes} classes; "
                f"the manifest says {manifest.num_features} to {len(manifest.labels)}"
            )
        model.warm_up(self._warmup)
        model.check_probe(manifest.probe)
        return model

    def _refuse(self, what: str, e: BaseException) -> None:
        self.updates_refused += 1
        self._error(f"refused {what}: {e}")
        logger.error("updater: refused %s: %s", what, e)

    def _error(self, message: str) -> None:
        self.last_error, self.last_error_at = message, time.time()

    def _get(self, key: str) -> bytes | None:
        value: Any = self._redis.get(key)
        return value if isinstance(value, bytes) or value is None else str(value).encode()


Entry = tuple[str, dict[bytes, bytes]]


def _entries(raw: Any) -> list[Entry]:
    """Stream entries of an XREAD/XREVRANGE reply as (id, fields)."""
    out: list[Entry] = []
    for entry_id, fields in raw or ():
        out.append(
            (
                entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id),
                dict(fields or {}),
            )
        )
    return out
