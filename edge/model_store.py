"""The edge's model store: every version it may serve, on disk, by sha256.

Layout under ``state_dir``::

    state.json                    current and last-known-good sha, history,
                                  the delta stream's last id, the feedback epoch,
                                  a version the edge refused after a self-revert
    models/<sha>.tflite           the model file, named by its own hash
    models/<sha>.manifest.json    the SignedManifest it arrived with

Every write is atomic (see ``shared.durable``) and ``state.json`` is written last,
so it is the commit point of an install: a crash before it leaves the previous
version current and at most an orphan file, which the next prune removes. A file
is re-hashed each time it is loaded, so a bit flip on the SD card is refused
(IntegrityError) instead of served, and the serving chain falls back.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shared.codec import check_sha256, is_sha256, sha256_hex
from shared.durable import atomic_write, remove_durably
from shared.errors import IntegrityError, MessageError, NotFound
from shared.messages import SignedManifest

logger = logging.getLogger(__name__)

#: How many install records ``state.json`` keeps (the files kept is ``keep``).
HISTORY_LIMIT = 50


@dataclass
class StoreState:
    """What ``state.json`` holds. Local to one device, so a dataclass, not a wire message."""

    epoch: str
    current: str | None = None
    last_known_good: str | None = None
    deltas_last_id: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    #: A version the edge reverted from (edge/guard.py) and why: the updater does
    #: not apply it again while it stays the desired version.
    refused_sha256: str | None = None
    revert_reason: str | None = None

    @classmethod
    def fresh(cls) -> StoreState:
        # A new random epoch per state directory: a wiped device never reuses an
        # old feedback id (see ARCHITECTURE.md, "Idempotency").
        return cls(epoch=secrets.token_hex(6))


@dataclass(frozen=True)
class StoredVersion:
    """A verified model file with the manifest it was installed with."""

    sha256: str
    version: int
    data: bytes
    signed: SignedManifest


class ModelStore:
    """Versions on disk, the pointer to the one to serve, and the device's epoch."""

    def __init__(self, state_dir: Path, keep: int = 5) -> None:
        if keep < 2:
            raise ValueError("keep must be at least 2 (current and last-known-good)")
        self.state_dir = Path(state_dir)
        self.models_dir = self.state_dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._path = self.state_dir / "state.json"
        self._lock = threading.Lock()
        self._state = self._read_state()
        self._remove_temp_files()

    # -- state --------------------------------------------------------------

    @property
    def epoch(self) -> str:
        return self._state.epoch

    @property
    def current(self) -> str | None:
        return self._state.current

    @property
    def last_known_good(self) -> str | None:
        return self._state.last_known_good

    @property
    def deltas_last_id(self) -> str | None:
        return self._state.deltas_last_id

    @property
    def refused_sha256(self) -> str | None:
        return self._state.refused_sha256

    @property
    def revert_reason(self) -> str | None:
        return self._state.revert_reason

    def history(self) -> list[dict[str, Any]]:
        return [dict(h) for h in self._state.history]

    def revert(self, to_sha256: str, version: int | None, *, refused: str, reason: str) -> None:
        """Serve ``to_sha256`` (a stored version) again and refuse ``refused``
        until ``clear_refusal``; persisted at once. The refused version is not
        kept as last-known-good: it just proved not to be good."""
        with self._lock:
            st = self._state
            st.current, st.last_known_good = to_sha256, None
            st.refused_sha256, st.revert_reason = refused, reason
            st.history.append(
                {
                    "sha256": to_sha256,
                    "version": version,
                    "installed_at": time.time(),
                    "reverted_from": refused,
                }
            )
            del st.history[:-HISTORY_LIMIT]
            self._write_state()

    def clear_refusal(self) -> None:
        """Allow the refused version again (the desired version moved on)."""
        with self._lock:
            if self._state.refused_sha256 is not None:
                self._state.refused_sha256 = self._state.revert_reason = None
                self._write_state()

    def set_deltas_last_id(self, entry_id: str) -> None:
        """Remember how far the delta stream has been read (persisted at once)."""
        with self._lock:
            if self._state.deltas_last_id != entry_id:
                self._state.deltas_last_id = entry_id
                self._write_state()

    def _read_state(self) -> StoreState:
        if not self._path.exists():
            state = StoreState.fresh()
            self._state = state
            self._write_state()
            logger.info("new state directory %s (feedback epoch %s)", self.state_dir, state.epoch)
            return state
        try:
            raw = json.loads(self._path.read_bytes())
            return StoreState(**raw)
        except (ValueError, TypeError) as e:
            # Atomic writes make this a disk fault, not a torn write. Keep the
            # evidence, start with a new epoch; the updater re-converges.
            aside = self._path.with_name(f"state.json.corrupt-{int(time.time())}")
            self._path.replace(aside)
            logger.error("state file %s is unreadable (%s); moved to %s", self._path, e, aside.name)
            return self._read_state()

    def _write_state(self) -> None:
        atomic_write(self._path, json.dumps(asdict(self._state), indent=1).encode())

    # -- files --------------------------------------------------------------

    def model_path(self, sha256: str) -> Path:
        return self.models_dir / f"{_file_name(sha256)}.tflite"

    def manifest_path(self, sha256: str) -> Path:
        return self.models_dir / f"{_file_name(sha256)}.manifest.json"

    def has(self, sha256: str) -> bool:
        return self.model_path(sha256).exists() and self.manifest_path(sha256).exists()

    def stored(self) -> list[str]:
        """The sha256 of every model file on disk."""
        names = (p.name.removesuffix(".tflite") for p in self.models_dir.glob("*.tflite"))
        return sorted(name for name in names if is_sha256(name))

    def load(self, sha256: str) -> StoredVersion:
        """Read and re-verify one version. Raises NotFound, IntegrityError or MessageError."""
        try:
            data = self.model_path(sha256).read_bytes()
            manifest_raw = self.manifest_path(sha256).read_bytes()
        except FileNotFoundError as e:
            raise NotFound(f"model {sha256[:12]} is not in the store ({e.filename})") from e
        check_sha256(data, sha256, what=f"stored model {sha256[:12]}")
        signed = SignedManifest.from_wire(manifest_raw)
        manifest = signed.manifest()
        if manifest.sha256 != sha256:
            raise IntegrityError(f"stored manifest of {sha256[:12]} names {manifest.sha256[:12]}")
        return StoredVersion(sha256, manifest.version, data, signed)

    def install(self, data: bytes, signed: SignedManifest, *, last_known_good: str | None) -> str:
        """Store a verified version and make it current, with ``last_known_good``
        (normally the version it replaces, if that one was serving) behind it.
        Returns the sha256. The caller has verified signature, hash and probe;
        this only makes the result durable."""
        sha = sha256_hex(data)
        manifest = signed.manifest()
        if manifest.sha256 != sha:
            raise IntegrityError(f"manifest names {manifest.sha256[:12]}, data is {sha[:12]}")
        if not self._file_ok(sha):
            atomic_write(self.model_path(sha), data)
        atomic_write(self.manifest_path(sha), signed.to_wire())
        with self._lock:
            st = self._state
            st.current = sha
            if last_known_good != sha:
                st.last_known_good = last_known_good
            st.history.append(
                {"sha256": sha, "version": manifest.version, "installed_at": time.time()}
            )
            del st.history[:-HISTORY_LIMIT]
            self._write_state()
        self.prune()
        return sha

    def _file_ok(self, sha: str) -> bool:
        try:
            check_sha256(self.model_path(sha).read_bytes(), sha)
        except (OSError, IntegrityError):
            return False
        return True

    def prune(self) -> list[str]:
        """Delete files beyond the last ``keep`` installed versions; never the
        current or last-known-good one. Returns the sha256s removed."""
        with self._lock:
            keep = {self._state.current, self._state.last_known_good} - {None}
            for entry in reversed(self._state.history):
                if len(keep) >= self.keep:
                    break
                keep.add(entry["sha256"])
        removed = [sha for sha in self.stored() if sha not in keep]
        for sha in removed:
            remove_durably(self.model_path(sha))
            remove_durably(self.manifest_path(sha))
        # A manifest whose model file is gone (crash between the two deletes).
        for path in self.models_dir.glob("*.manifest.json"):
            if path.name.removesuffix(".manifest.json") not in keep:
                remove_durably(path)
        if removed:
            logger.info(
                "pruned %d old version(s): %s", len(removed), ", ".join(s[:12] for s in removed)
            )
        return removed

    def _remove_temp_files(self) -> None:
        for directory in (self.state_dir, self.models_dir):
            for tmp in directory.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


def _file_name(sha256: str) -> str:
    # A name from the wire (an announcement, a target) becomes a path here: only
    # 64 hex digits may, so "../" or a slash never reaches the file system.
    if not is_sha256(sha256):
        raise IntegrityError(f"{sha256[:80]!r} is not a version name (64 lowercase hex digits)")
    return sha256


def load_if_sound(store: ModelStore, sha256: str | None) -> StoredVersion | None:
    """Load ``sha256`` from ``store`` if set, logging (not raising) when it is
    unusable: a corrupted current version must not stop the edge from serving."""
    if sha256 is None:
        return None
    try:
        return store.load(sha256)
    except (NotFound, IntegrityError, MessageError) as e:
        logger.error("refusing stored model %s: %s", sha256[:12], e)
        return None
