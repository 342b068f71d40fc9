"""The update consumer: makes the edge serve its desired version, verified and hot-swapped.

What an edge should serve is its **desired version** (``shared.rollouts.
desired_sha``): its pin, else its rollout assignment, else the fleet's target,
read from Redis in one pipeline. The consumer reads it again

- when it starts (a device that was offline converges when it comes back),
- on every delta-stream entry for its model: a ``DeltaAnnouncement`` (field
  ``data``) or an ``AssignmentNotice`` (field ``assign``) that concerns it,
- and every ``poll_s`` seconds, so that a missed notice is harmless.

When no target, assignment or pin exists for the device (a fleet whose
publisher predates targets), it follows the announcements as before: the newest
one of its model that passes is applied.

Every edge reads every stream entry with plain XREAD from the last id it kept
(in the model store's state). A new edge, with no last id, reads the newest
entries with XREVRANGE and converges at once instead of replaying history.

Fetching a version by sha256: a version still in the local store (say, the one
a rollback returns to) is taken from disk, its stored signed manifest verified
again. Otherwise the signed manifest ``manifest(sha)`` is the authority: its
signature is verified before anything in it is believed, then the file must hash
to the manifest's sha256, load in this runtime, be static int8, have the
manifest's shape and reproduce the manifest's probe outputs. Only then is it
installed (atomically) and swapped in. Any failure is one log line, a count in
``updates_refused`` and ``last_error``; the old model keeps serving. A Redis
outage is not a refusal: the read is retried with backoff and the stream
position is not advanced past an entry that could not be handled. A desired
version that was refused is tried again on the next entry for this edge, or
after ``RETRY_REFUSED_S``.

Payloads: when a patch from the version this edge serves exists (listed in the
version's announcement, or under the conventional key ``patch(served, sha)``),
the edge fetches it and applies it to that version's bytes from the model store
(re-hashed when read; ``apply_patch`` checks the base hash before and the target
hash after). Any failure of a listed patch (missing key, another base, corrupt
or truncated patch, wrong result) is one log line and a count in
``patch_failures``, and the edge fetches the full file ``artifact(sha)``
instead. Either way the file is whole in memory and verified before
``ModelStore.install`` writes it atomically, so a truncated or interrupted
download never leaves a half-written model in use.

Reading what the wire names: an announcement's sha256 and a desired version must
be 64 hex digits, and every key an announcement names must be one of this
fleet's (``FleetKeys.owns``), or the entry is refused. A payload or manifest is
measured (``STRLEN``) before a byte of it is read and refused when it is over its
bound (the signed size, compressed, for a payload; ``MAX_MANIFEST_BYTES`` for a
manifest) or not the size its announcement lists; it is then read in pieces
(``GETRANGE``) on a connection of its own that is cut when the download's
deadline (``download_deadline_s``) passes, so neither an endless nor a stalled
or trickling value can hold the updater. A key the edge
may not read (``NOPERM``) or that holds another type (``WRONGTYPE``) refuses
that entry (logged, counted in ``updates_refused``, the stream position
advanced), exactly as a missing key does: only an unreachable Redis is an outage.

Self-protection (``edge.guard``) runs in this thread too, so that a revert and a
swap never race: each swap is reported to the guard, the guard is ticked on
every loop (also while Redis is down), and a version the guard refused is not
applied again while it stays the desired version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.exceptions import NoPermissionError

from edge.connections import REDIS_ERRORS, FleetMember, describe
from edge.director import DirectorGate
from edge.fallback import ServingChain
from edge.fleet_api import ApiUnreachable, FleetApi
from edge.guard import SwapGuard
from edge.model_store import ModelStore
from edge.tuf_client import NotInTargets, TufClient, TufRefused
from shared import replies
from shared.codec import DEFAULT_MAX_SIZE, check_sha256, decode_full, is_sha256
from shared.delta import apply_patch
from shared.errors import ArtifactError, EdgeloopError, IntegrityError, ModelRejected, NotFound
from shared.messages import DeltaAnnouncement, ModelManifest, Payload, SignedManifest
from shared.payloads import materialize, payload_bound
from shared.redis_client import disconnect
from shared.retry import Backoff
from shared.rollouts import AssignmentNotice, desired_sha
from shared.runtime import TFLiteModel
from shared.signing import Verifier

logger = logging.getLogger(__name__)

#: What the thread waits out with backoff: the fleet's Redis or the API cannot answer.
OUTAGES: tuple[type[BaseException], ...] = (*REDIS_ERRORS, ApiUnreachable)
#: How far back a new edge looks for an announcement of its model.
CONVERGE_SCAN = 200
#: A refused desired version is fetched again after this long without a new stream entry.
RETRY_REFUSED_S = 300.0
#: Announcements remembered by sha256, for their payload lists.
ANNOUNCEMENTS_KEPT = 64
#: Longest wait between guard ticks while Redis is unreachable.
GUARD_TICK_S = 0.5
#: A signed manifest larger than this is refused unread (a real one is a few KiB to
#: a few hundred: probe set, metrics, explanation).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: Bytes per GETRANGE of a download: a value is never one huge reply.
DOWNLOAD_PIECE_BYTES = 1024 * 1024


class KeyRefused(EdgeloopError):
    """Redis refused a key an entry names (no permission, another type): a refusal of
    that entry, not an outage."""


class DownloadRefused(ArtifactError):
    """A payload or manifest is over its bound, not its listed size, or took longer
    than the download deadline; nothing more of it is read."""


@dataclass(frozen=True)
class UpdatePolicy:
    """What the consumer accepts and how it follows the fleet (EdgeSettings
    ``max_artifact_bytes``, ``runtime``, ``num_threads``, ``warmup_invokes``,
    ``desired_poll_s``).

    ``block_ms`` bounds each XREAD, hence how long ``stop`` waits; ``backoff``
    spaces the retries while Redis is unreachable.
    """

    max_artifact_bytes: int = DEFAULT_MAX_SIZE
    runtime: str | None = None
    num_threads: int = 1
    warmup_invokes: int = 3
    block_ms: int = 250
    poll_s: float = 30.0
    download_deadline_s: float = 60.0
    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.2, cap=10.0))


class UpdateConsumer:
    """A thread that keeps the served model on the desired version; see the module docstring.

    It installs versions in ``store`` and swaps them into ``chain``, trusting
    manifests that ``verifier`` accepts; each swap is reported to ``guard`` (which
    is ticked in this thread) and then to ``on_swap``.
    """

    def __init__(
        self,
        member: FleetMember,
        policy: UpdatePolicy,
        *,
        store: ModelStore,
        chain: ServingChain,
        verifier: Verifier,
        guard: SwapGuard | None = None,
        on_swap: Callable[[], None] | None = None,
        tuf: TufClient | None = None,
        director: DirectorGate | None = None,
        api: FleetApi | None = None,
    ) -> None:
        self._redis = member.connect(socket_timeout=policy.block_ms / 1000.0 + 5.0)
        # Downloads have a connection of their own, without retries, that a deadline
        # can cut (``_download``) without touching the stream reads.
        self._downloads = member.connect(socket_timeout=policy.block_ms / 1000.0 + 5.0, retries=0)
        self._abandoned = threading.Event()
        self._keys, self._model, self._device = member.keys, member.model, member.device_id
        self._policy = policy
        self._store, self._chain, self._verifier = store, chain, verifier
        self._guard = guard
        self._on_swap = on_swap
        # Set (the setting ``tuf_root``): a version is installed only if the fleet's
        # signed TUF targets list it, and its file comes through TUF's verified download.
        self._tuf = tuf
        # Set (the setting ``director_keys``): the desired version is what a signed
        # director order names, never the unsigned target/assignment/pin.
        self._director = director
        self._director_pems: list[bytes] | None = None  # the last adopted from the TUF root
        # Set (the setting ``update_source = "http"``): no Redis at all. The desired version
        # (orders, or target/assignment/pin) comes from the cloud API every ``poll_s``, and
        # ``tuf`` reads the repository from it too; there is no stream to wake up on.
        self._api = api
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgeloop-updater", daemon=True)
        self._next_check = 0.0  # so the first poll reads the desired version
        self._announced: dict[str, DeltaAnnouncement] = {}
        self._failed: dict[str, float] = {}  # desired sha256 -> when it was refused
        self.desired: str | None = None  # as last read; None: following announcements
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
        self._downloads.close()
        if self._api is not None:
            self._api.close()

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self._protect()
            try:
                self.poll()
                attempt = 0
            except OUTAGES as e:
                if attempt == 0:
                    logger.warning(
                        "updater: %s unreachable (%s); retrying with backoff",
                        "the API" if self._api is not None else "Redis",
                        describe(e),
                    )
                self._error(f"updater: {describe(e)}")
                self._wait(self._policy.backoff.delay(attempt))
                attempt += 1
            except Exception as e:  # the thread must outlive any one bad entry
                logger.exception("updater: unexpected error")
                self._error(f"updater: {type(e).__name__}: {e}")
                self._wait(1.0)

    def _wait(self, seconds: float) -> None:
        """Sleep (until stopped), still ticking the guard: self-protection needs no Redis."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, GUARD_TICK_S))
            self._protect()

    def _protect(self) -> None:
        if self._guard is None:
            return
        try:
            self._guard.tick()
        except Exception:  # a fault in judging must not stop the updates
            logger.exception("guard: unexpected error")

    def poll(self) -> None:
        """Read (blocking up to block_ms) what the stream has for us, and follow
        the desired version when an entry concerns us or the periodic check is due.
        Over the API: wait for the periodic check (the first one at once), then follow."""
        if self._api is not None:
            first = self._next_check == 0.0
            self._wait(self._next_check - time.monotonic())
            if not self._stop.is_set():
                self._follow([], nudged=first)
            return
        last_id = self._store.deltas_last_id
        if last_id is None:
            self._converge()
            return
        resp: Any = self._redis.xread(
            {self._keys.deltas: last_id}, count=100, block=self._policy.block_ms
        )
        entries = _entries(resp[0][1]) if resp else []
        announcements, concerned = self._read(entries)
        if concerned or time.monotonic() >= self._next_check:
            self._follow(announcements, nudged=concerned)
        if entries:
            self._store.set_deltas_last_id(entries[-1][0])

    def _converge(self) -> None:
        """First start: serve the desired version (or the newest good announcement),
        then follow from the stream's end."""
        newest_first = _entries(self._redis.xrevrange(self._keys.deltas, count=CONVERGE_SCAN))
        announcements, _ = self._read(newest_first[::-1])
        self._follow(announcements, nudged=True)
        self._store.set_deltas_last_id(newest_first[0][0] if newest_first else "0-0")

    def _read(self, entries: list[Entry]) -> tuple[list[DeltaAnnouncement], bool]:
        """The announcements of our model in ``entries`` (stream order), and whether
        any entry concerns this edge."""
        found: list[DeltaAnnouncement] = []
        concerned = False
        for entry_id, fields in entries:
            if b"assign" in fields:
                notice = self._parse_notice(entry_id, fields[b"assign"])
                concerned |= notice is not None and notice.concerns(self._model, self._device)
                continue
            ann = self._parse(entry_id, fields)
            if ann is not None:
                found.append(ann)
                self._remember(ann)
        return found, concerned or bool(found)

    @property
    def stale(self) -> bool:
        """The fleet's TUF timestamp or this device's director order has expired."""
        tuf_stale = self._tuf is not None and self._tuf.stale
        return tuf_stale or (self._director is not None and self._director.stale)

    def _follow(self, announcements: list[DeltaAnnouncement], *, nudged: bool) -> None:
        if self._tuf is not None:
            # Every poll, not only when a version is wanted: a frozen repository must be
            # noticed (``stale``) while the edge has nothing to install.
            try:
                self._tuf.refresh()
            except TufRefused as e:
                self._error(str(e))
                logger.warning("updater: %s", e)
            self._adopt_director_keys()
        self.desired = self._read_desired()
        self._next_check = time.monotonic() + self._policy.poll_s
        if self.desired is None:
            if self._directed:
                return  # no order to follow: keep serving; announcements choose nothing
            self._apply_newest(announcements)
        else:
            self._converge_to(self.desired, retry=nudged)

    @property
    def tuf_root_version(self) -> int | None:
        """The version of the fleet's TUF root this edge trusts (None without TUF)."""
        return self._tuf.root_version if self._tuf is not None else None

    @property
    def _directed(self) -> bool:
        """Whether the desired version comes from director orders: the edge has
        director keys, from its files or from the fleet's TUF root."""
        # A root that names a director directs the edge even if none of its keys is
        # usable here: nothing verifies then, and the unsigned target is never a fallback.
        named = self._director_pems is not None
        return self._director is not None and (bool(self._director.trusted) or named)

    def _adopt_director_keys(self) -> None:
        """The director keys the trusted TUF root names replace any others: a rotated
        director key reaches the edge through the root chain, and the old one is
        refused from then on."""
        assert self._tuf is not None
        pems = self._tuf.director_keys()
        if pems is None or self._director is None or pems == self._director_pems:
            return
        self._director.trusted = [Verifier(pem) for pem in pems]
        self._director_pems = pems
        logger.info("updater: director keys from TUF root v%s", self._tuf.root_version)

    def _read_desired(self) -> str | None:
        if self._api is not None:
            return self._read_desired_over_api()
        if self._director is not None and self._directed:
            refused = self._director.refused
            try:
                order = self._director.read(self._redis)
            except EdgeloopError as e:
                self._refuse(f"the director order of {self._model}", e)
                return None
            if self._director.refused > refused:
                # An order that does not verify is not followed; it is reported, as any
                # refused update is (the edge keeps its valid order or what it serves).
                self.updates_refused += self._director.refused - refused
                self._error(f"refused {self._director.last_refusal}")
            return order.sha256 if order is not None else None
        return self._read_unsigned()

    def _read_desired_over_api(self) -> str | None:
        """``_read_desired`` from the API's copy of the same keys: the same judgement of
        orders, or of the unsigned values. ApiUnreachable propagates (an outage)."""
        assert self._api is not None
        try:
            orders = self._api.orders(self._model, self._device)
        except ApiUnreachable:
            raise
        except EdgeloopError as e:
            self._refuse(f"the orders of {self._model} from the API", e)
            return None
        if self._director is not None and self._directed:
            try:
                order = self._director.choose(orders.device_order, orders.fleet_order)
            except EdgeloopError as e:
                self._refuse(f"the director order of {self._model}", e)
                return None
            return order.sha256 if order is not None else None
        named = {"target": orders.target, "assignment": orders.assignment, "pin": orders.pin}
        values: list[str | None] = []
        for name, value in named.items():
            if value is not None and not is_sha256(value):
                self._refuse(
                    f"the {name} of {self._model}",
                    IntegrityError(f"{value[:80]!r} is not a version name (64 hex digits)"),
                )
                value = None
            values.append(value)
        return desired_sha(*values)

    def _read_unsigned(self) -> str | None:
        """``desired_sha(target, assignment, pin)`` for this device, in one round trip.

        A value that is not a version name, or a key Redis refuses (another type, no
        permission), counts as a refusal and as absent."""
        names = ("target", "assignment", "pin")
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._keys.target(self._model))
        pipe.hget(self._keys.assignments(self._model), self._device)
        pipe.hget(self._keys.pins(self._model), self._device)
        values: list[str | None] = []
        for name, reply in zip(names, pipe.execute(raise_on_error=False), strict=True):
            try:
                value = replies.optional_text(_reply(reply, f"the {name} of {self._model}"))
                if value is not None and not is_sha256(value):
                    raise IntegrityError(
                        f"the {name} of {self._model} is {value[:80]!r}, not a version name "
                        "(64 lowercase hex digits)"
                    )
            except EdgeloopError as e:
                self._refuse(f"the {name} of {self._model}", e)
                value = None
            values.append(value)
        return desired_sha(*values)

    def _converge_to(self, desired: str, *, retry: bool) -> None:
        refused = self._store.refused_sha256
        if refused is not None and refused != desired:
            logger.info(
                "updater: the desired version is no longer %s, which this edge reverted from; "
                "it may be applied again",
                refused[:12],
            )
            self._store.clear_refusal()
        current = self._chain.current
        if current is not None and current.sha256 == desired:
            return
        if desired == self._store.refused_sha256:
            logger.debug("updater: desired %s was reverted here; staying", desired[:12])
            return
        failed_at = self._failed.get(desired)
        if failed_at is not None and not retry and time.monotonic() - failed_at < RETRY_REFUSED_S:
            return
        ann = self._announced.get(desired)
        what = (
            f"{self._model} v{ann.version} ({desired[:12]})"
            if ann
            else f"{self._model} {desired[:12]}"
        )
        if self._apply_sha(desired, ann, what):
            self._failed.pop(desired, None)
        else:
            self._failed[desired] = time.monotonic()

    def _apply_newest(self, announcements: list[DeltaAnnouncement]) -> None:
        """Of announcements in stream order, apply the newest one that passes.

        Older ones in the same read are superseded; they are tried only when a
        newer one is refused, so the edge converges on the newest good version.
        A version this edge reverted from stops the search: it stays where it is
        until something newer is announced.
        """
        refused = self._store.refused_sha256
        for ann in reversed(announcements):
            if ann.sha256 == refused:
                return
            if self.apply(ann):
                if refused is not None and ann.sha256 != refused:
                    self._store.clear_refusal()
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
        if ann.model != self._model:
            return None
        named = (ann.manifest_key, *(p.key for p in ann.payloads))
        foreign = [k for k in named if not self._keys.owns(k)]
        if foreign:
            self._refuse(
                f"announcement {entry_id}",
                IntegrityError(f"it names {foreign[0][:80]!r}, not a key of this fleet"),
            )
            return None
        return ann

    def _parse_notice(self, entry_id: str, raw: bytes) -> AssignmentNotice | None:
        try:
            return AssignmentNotice.from_wire(raw)
        except EdgeloopError as e:
            # Only a hint to look again: the periodic check covers a lost one.
            logger.warning("updater: ignoring assignment notice %s: %s", entry_id, e)
            return None

    def _remember(self, ann: DeltaAnnouncement) -> None:
        self._announced.pop(ann.sha256, None)
        self._announced[ann.sha256] = ann
        while len(self._announced) > ANNOUNCEMENTS_KEPT:
            del self._announced[next(iter(self._announced))]

    # -- one version --------------------------------------------------------

    def apply(self, ann: DeltaAnnouncement) -> bool:
        """Verify, check and swap in ``ann``'s version. True when it is now
        served (or already was); False when refused. Redis errors propagate."""
        return self._apply_sha(ann.sha256, ann, f"{ann.model} v{ann.version} ({ann.sha256[:12]})")

    def _apply_sha(self, sha: str, ann: DeltaAnnouncement | None, what: str) -> bool:
        current = self._chain.current
        if current is not None and current.sha256 == sha:
            logger.debug("updater: already serving %s", what)
            return True
        started = time.perf_counter()
        try:
            signed, manifest, data = self._obtain(sha, ann)
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
        previous_lkg = self._chain.last_known_good
        self._chain.swap(model)
        self.swaps += 1
        if self._guard is not None:
            back = previous_lkg is not None and previous_lkg.sha256 == model.sha256
            self._guard.swapped(current, model, back=back)
        logger.info(
            "serving %s v%d (%s), was %s; verified and swapped in %.0f ms",
            manifest.model,
            manifest.version,
            sha[:12],
            f"v{current.version}" if current else "no model",
            (time.perf_counter() - started) * 1000,
        )
        if self._on_swap is not None:
            self._on_swap()
        return True

    def _obtain(
        self, sha: str, ann: DeltaAnnouncement | None
    ) -> tuple[SignedManifest, ModelManifest, bytes]:
        """The signed manifest, manifest and verified bytes of version ``sha``."""
        if self._tuf is not None:
            return self._obtain_tuf(sha)
        local = self._from_store(sha)
        if local is not None:
            return local
        signed, manifest = self._fetch_manifest(sha, ann)
        return signed, manifest, self._fetch_model(sha, ann, manifest)

    def _obtain_tuf(self, sha: str) -> tuple[SignedManifest, ModelManifest, bytes]:
        """Version ``sha`` as the fleet's TUF targets vouch for it: from the local store
        when still there and still listed, else a listed patch from the served version,
        else the full file, each downloaded through the TUF updater."""
        assert self._tuf is not None
        self._tuf.refresh()
        if not self._tuf.lists(sha):
            raise NotInTargets(f"the signed targets do not list {sha[:12]}")
        local = self._from_store(sha)
        if local is not None:
            return local
        signed = self._tuf.manifest(sha)
        self._verifier.verify(signed.manifest_json.encode("utf-8"), signed.signature)
        manifest = signed.manifest()
        if manifest.sha256 != sha or manifest.model != self._model:
            raise IntegrityError(
                f"the targets' manifest describes {manifest.model} {manifest.sha256[:12]}, "
                f"not {self._model} {sha[:12]}"
            )
        patched = self._tuf_patch(manifest)
        if patched is not None:
            return signed, manifest, patched
        target = self._tuf.download(sha, refresh=False)
        self.bytes_downloaded += len(target.artifact)
        data = decode_full(
            target.artifact, max_size=min(manifest.size, self._policy.max_artifact_bytes)
        )
        self._check_model(data, manifest)
        self.full_downloads += 1
        return signed, manifest, data

    def _tuf_patch(self, manifest: ModelManifest) -> bytes | None:
        """The new version from a patch the targets list from the served one, or None
        (none listed, or it failed: logged, counted, and the full file is fetched)."""
        assert self._tuf is not None
        current = self._chain.current
        if current is None or not self._store.has(current.sha256):
            return None
        try:
            patch = self._tuf.download_patch(current.sha256, manifest.sha256)
            if patch is None:
                return None
            self.bytes_downloaded += len(patch)
            base = self._store.load(current.sha256).data
            data = apply_patch(base, patch, min(manifest.size, self._policy.max_artifact_bytes))
            self._check_model(data, manifest)
        except EdgeloopError as e:
            self._patch_failed(current, manifest, e)
            return None
        self.patches_applied += 1
        return data

    @staticmethod
    def _check_model(data: bytes, manifest: ModelManifest) -> None:
        if len(data) != manifest.size:
            raise IntegrityError(
                f"model file is {len(data)} bytes, the manifest says {manifest.size}"
            )
        check_sha256(data, manifest.sha256, what="model file")

    def _from_store(self, sha: str) -> tuple[SignedManifest, ModelManifest, bytes] | None:
        """A version still on disk (a step back needs no download), verified again."""
        if not self._store.has(sha):
            return None
        try:
            stored = self._store.load(sha)
            self._verifier.verify(
                stored.signed.manifest_json.encode("utf-8"), stored.signed.signature
            )
            manifest = stored.signed.manifest()
            if manifest.model != self._model:
                raise IntegrityError(f"stored {sha[:12]} is a version of {manifest.model}")
        except EdgeloopError as e:
            logger.warning("updater: stored copy of %s not used (%s); fetching it", sha[:12], e)
            return None
        logger.info("updater: %s v%d is in the local store", manifest.model, manifest.version)
        return stored.signed, manifest, stored.data

    def _fetch_manifest(
        self, sha: str, ann: DeltaAnnouncement | None
    ) -> tuple[SignedManifest, ModelManifest]:
        key = ann.manifest_key if ann is not None else self._keys.manifest(sha)
        raw = self._download(key, MAX_MANIFEST_BYTES, what="manifest")
        signed = SignedManifest.from_wire(raw)
        # Verify before believing a single field of the manifest.
        self._verifier.verify(signed.manifest_json.encode("utf-8"), signed.signature)
        manifest = signed.manifest()
        if manifest.sha256 != sha or manifest.model != self._model:
            named = "announced" if ann is not None else "desired"
            raise IntegrityError(
                f"the signed manifest describes {manifest.model} {manifest.sha256[:12]}, "
                f"not the {named} {self._model} {sha[:12]}"
            )
        return signed, manifest

    def _fetch_model(
        self, sha: str, ann: DeltaAnnouncement | None, manifest: ModelManifest
    ) -> bytes:
        current = self._chain.current
        if current is not None:
            listed = ann.patch_from(current.sha256) if ann is not None else None
            patch = listed or Payload(
                encoding="patch",
                key=self._keys.patch(current.sha256, sha),
                size=0,
                base_sha256=current.sha256,
            )
            try:
                base = self._store.load(current.sha256).data
                data = self._fetch_payload(patch, manifest, base)
            except NotFound as e:
                if listed is not None:  # an unlisted patch is only a guess
                    self._patch_failed(current, manifest, e)
            except EdgeloopError as e:
                self._patch_failed(current, manifest, e)
            else:
                self.patches_applied += 1
                return data
        full = (
            ann.full_payload()
            if ann is not None
            else Payload(encoding="full", key=self._keys.artifact(sha), size=0)
        )
        data = self._fetch_payload(full, manifest, None)
        self.full_downloads += 1
        return data

    def _patch_failed(self, current: TFLiteModel, manifest: ModelManifest, e: Exception) -> None:
        self.patch_failures += 1
        logger.warning(
            "updater: patch v%d -> v%d refused (%s); fetching the full file",
            current.version or 0,
            manifest.version,
            e,
        )

    def _fetch_payload(
        self, payload: Payload, manifest: ModelManifest, base: bytes | None
    ) -> bytes:
        bound = payload_bound(min(manifest.size, self._policy.max_artifact_bytes))
        blob = self._download(payload.key, bound, what="payload", listed=payload.size)
        self.bytes_downloaded += len(blob)
        data = materialize(payload, blob, base, self._policy.max_artifact_bytes)
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
            num_threads=self._policy.num_threads,
            runtime=self._policy.runtime,
            input=manifest.input,
            task=manifest.task,
        )
        if not model.heavy_ops_int8():
            raise ModelRejected(
                f"{model.name} has float compute ops (a float or dynamic-range model); "
                "edges serve static int8 models only"
            )
        task = manifest.task_spec
        if model.num_features != manifest.num_features or model.width != task.width:
            raise ModelRejected(
                f"{model.name} maps {model.num_features} values to {model.width} answers; "
                f"the manifest says {manifest.num_features} to {task.width}"
            )
        model.warm_up(self._policy.warmup_invokes)
        model.check_probe(manifest.probe)
        return model

    def _refuse(self, what: str, e: BaseException) -> None:
        self.updates_refused += 1
        self._error(f"refused {what}: {e}")
        logger.error("updater: refused %s: %s", what, e)

    def _error(self, message: str) -> None:
        self.last_error, self.last_error_at = message, time.time()

    def _download(self, key: str, bound: int, *, what: str, listed: int = 0) -> bytes:
        """The value of ``key``: measured before it is read, refused over ``bound`` or
        when not ``listed`` bytes (0: unlisted), read in pieces on the download
        connection, which is cut when the download deadline passes (a stalled or
        trickling server). NotFound, KeyRefused or DownloadRefused; an unreachable
        Redis propagates."""
        limit = self._policy.download_deadline_s
        self._abandoned.clear()
        timer = threading.Timer(limit, self._abandon)
        timer.daemon = True
        timer.start()
        try:
            return self._read_value(key, bound, what, listed)
        except REDIS_ERRORS as e:
            if self._abandoned.is_set():
                raise DownloadRefused(
                    f"{what} {key} was not read within the download deadline of {limit:g}s; "
                    "abandoned"
                ) from e
            raise
        finally:
            timer.cancel()

    def _abandon(self) -> None:
        self._abandoned.set()
        # Closing the sockets under a blocked read ends it at once (ConnectionError).
        disconnect(self._downloads)

    def _read_value(self, key: str, bound: int, what: str, listed: int) -> bytes:
        client = self._downloads
        size = int(_reply(self._call(client.strlen, key), f"{what} {key}"))
        if size == 0:  # STRLEN of a missing key; an empty value is no model either
            raise NotFound(f"{what} {key} is not in Redis")
        if size > bound:
            raise DownloadRefused(f"{what} {key} holds {size} bytes, over its bound of {bound}")
        if listed and size != listed:
            raise DownloadRefused(f"{what} {key} holds {size} bytes, its announcement {listed}")
        pieces: list[bytes] = []
        got = 0
        while got < size:
            end = min(got + DOWNLOAD_PIECE_BYTES, size) - 1
            piece = _reply(self._call(client.getrange, key, got, end), f"{what} {key}")
            if not isinstance(piece, bytes) or not piece:
                break
            pieces.append(piece)
            got += len(piece)
        if got != size:  # the key changed while it was read
            raise DownloadRefused(f"{what} {key} changed while it was read ({got} of {size})")
        return b"".join(pieces)

    @staticmethod
    def _call(read: Callable[..., Any], *args: Any) -> Any:
        """A read whose error replies (NOPERM, WRONGTYPE) are returned, for ``_reply``."""
        try:
            return read(*args)
        except redis.ResponseError as e:
            return e


Entry = tuple[str, dict[bytes, bytes]]


def _reply(value: Any, what: str) -> Any:
    """``value``, or KeyRefused when it is Redis refusing a key (no permission, another
    type). Any other error reply propagates as the Redis error it is."""
    if isinstance(value, NoPermissionError) or (
        isinstance(value, redis.ResponseError) and str(value).startswith("WRONGTYPE")
    ):
        raise KeyRefused(f"Redis refuses {what}: {describe(value)}")
    if isinstance(value, redis.RedisError):
        raise value
    return value


def _entries(raw: Any) -> list[Entry]:
    """Stream entries of an XREAD/XREVRANGE reply as (id, fields)."""
    return [(replies.text(entry_id), dict(fields or {})) for entry_id, fields in raw or ()]
