"""The edge's side of TUF: python-tuf's ``ngclient.Updater`` reading the fleet's
repository from Redis.

The device holds a trusted root (``EDGELOOP_TUF_ROOT``, a file put on it at
enrollment); from there the updater walks the root chain, then timestamp,
snapshot and targets, checking signatures, thresholds, versions (never lower
than what it has seen: the metadata it trusted is kept in ``metadata_dir``)
and expiry. A version is installed only if targets lists ``artifacts/<sha256>``,
and its bytes come through ``Updater.download_target``, which enforces the
signed length and sha256.

An edge without Redis gives it ``edge.fleet_api.HttpFetcher`` instead, reading the
same files from the cloud API; everything else is the same.

``RedisFetcher`` maps the updater's URLs to Redis keys (shared/tuf_paths.py)
and reads a value in chunks with GETRANGE after checking its STRLEN against the
most the updater will accept: an oversized file is refused before a byte of it
is read, never read whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import FetcherInterface, Updater

from shared.errors import EdgeloopError, IntegrityError, NotFound
from shared.keys import FleetKeys
from shared.messages import SignedManifest
from shared.tuf_paths import DIRECTOR_FIELD, artifact_path, metadata_key, patch_path, target_key

logger = logging.getLogger(__name__)

__all__ = ["NotInTargets", "RedisFetcher", "TufClient", "TufRefused", "VerifiedTarget"]

METADATA_URL = "redis://tuf/metadata/"
TARGETS_URL = "redis://tuf/targets/"
#: GETRANGE chunk: what one read of a target holds in memory at most besides the file.
CHUNK = 256 * 1024


class TufRefused(IntegrityError):
    """The TUF metadata or a target file did not verify."""


#: Refreshes started again when a publish lands in the middle of one (``TufClient.refresh``).
MOVED_ON_RETRIES = 3
# python-tuf's words when a file is not the version the metadata above it names
# (trusted_metadata_set.py): "Expected targets v6, got v7." and
# "Expected snapshot version 6, got 7".
_NAMED_VERSION = re.compile(r"^Expected \S+ v(?:ersion )?(\d+), got v?(\d+)")


def _moved_on(message: str) -> bool:
    """Whether a BadVersionNumberError says the file read is newer than the one named."""
    m = _NAMED_VERSION.match(message)
    return m is not None and int(m.group(2)) > int(m.group(1))


class NotInTargets(TufRefused, NotFound):
    """The signed targets do not list this version."""


def _stalled(key: str) -> tuf_errors.SlowRetrievalError:
    """A read that got no answer within the connection's timeout (the edge's download
    deadline): a refusal of this download (slow retrieval), not a Redis outage."""
    return tuf_errors.SlowRetrievalError(f"{key}: no answer within the download deadline")


class RedisFetcher(FetcherInterface):
    """Reads TUF metadata and target files from a fleet's Redis keys.

    Each read waits at most the connection's timeout, and a whole download at most
    ``deadline_s``: a server that trickles pieces just inside the timeout is cut off
    too (slow retrieval)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: FleetKeys,
        chunk: int = CHUNK,
        deadline_s: float | None = None,
    ) -> None:
        self._client, self._keys, self._chunk = client, keys, chunk
        self._deadline_s = deadline_s

    def _key(self, url: str) -> str:
        try:
            if url.startswith(METADATA_URL):
                return metadata_key(self._keys, url[len(METADATA_URL) :])
            if url.startswith(TARGETS_URL):
                return target_key(self._keys, url[len(TARGETS_URL) :])
        except IntegrityError as e:
            raise tuf_errors.DownloadHTTPError(str(e), 403) from e
        raise tuf_errors.DownloadHTTPError(f"not a URL of this fetcher: {url}", 403)

    def _size(self, key: str) -> int:
        try:
            size = int(self._client.strlen(key))  # type: ignore[arg-type]
        except redis.ResponseError as e:  # a wrong type: refused, not an outage
            raise tuf_errors.DownloadHTTPError(f"{key}: {e}", 403) from e
        except redis.TimeoutError as e:
            raise _stalled(key) from e
        if size == 0:
            # 404 is how ngclient learns that the root chain ends here.
            raise tuf_errors.DownloadHTTPError(f"{key} does not exist", 404)
        return size

    def _fetch(self, url: str) -> Iterator[bytes]:
        key = self._key(url)
        size = self._size(key)
        return self._chunks(key, size)

    def _chunks(self, key: str, size: int) -> Iterator[bytes]:
        offset = 0
        started = time.monotonic()
        while offset < size:
            if self._deadline_s is not None and time.monotonic() - started > self._deadline_s:
                raise tuf_errors.SlowRetrievalError(
                    f"{key}: {offset} of {size} bytes after the {self._deadline_s:g} s"
                    " download deadline"
                )
            try:
                part = self._client.getrange(key, offset, min(offset + self._chunk, size) - 1)
            except redis.TimeoutError as e:
                raise _stalled(key) from e
            data = bytes(part)  # type: ignore[arg-type]
            if not data:
                break  # the value shrank meanwhile: the hash check refuses what came
            offset += len(data)
            yield data

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """The value at ``url`` in a temporary file, measured once and refused before
        reading when over ``max_length`` (the library would stop only after that many
        bytes). Read here rather than through the library's ``fetch``, which wraps
        whatever it meets in a DownloadError: a Redis that cannot answer (a failover, a
        restart) comes out as the outage it is, which the updater waits out and tries
        again, not as a refused update."""
        key = self._key(url)
        size = self._size(key)
        if size > max_length:
            raise tuf_errors.DownloadLengthMismatchError(
                f"{url} holds {size} bytes, more than the {max_length} allowed"
            )
        with tempfile.TemporaryFile() as f:
            for part in self._chunks(key, size):
                f.write(part)
            f.seek(0)
            yield f


@dataclass(frozen=True)
class VerifiedTarget:
    """A version's file and manifest as the signed targets describe them."""

    sha256: str
    artifact: bytes  # the zstd file, its length and sha256 checked
    signed: SignedManifest
    model: str
    version: int


class TufClient:
    """Refreshes the fleet's TUF metadata and downloads verified versions."""

    def __init__(
        self,
        client: redis.Redis | None,
        keys: FleetKeys,
        metadata_dir: Path,
        trusted_root: bytes,
        *,
        fetcher: FetcherInterface | None = None,
        base_urls: tuple[str, str] = (METADATA_URL, TARGETS_URL),
        deadline_s: float | None = None,
    ) -> None:
        """Reads the fleet's repository from Redis through ``client``, or through
        ``fetcher`` at ``base_urls`` (metadata, targets): the API's, for an edge without
        Redis (edge/fleet_api.py). ``deadline_s`` bounds a whole download from Redis."""
        if fetcher is None:
            assert client is not None, "TufClient reads Redis (client) or a fetcher"
            fetcher = RedisFetcher(client, keys, deadline_s=deadline_s)
        self._fetcher = fetcher
        self._urls = base_urls
        self._dir = Path(metadata_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._bootstrap = trusted_root
        self.stale = False  # timestamp or snapshot expired at the last refresh
        self.last_refresh = 0.0
        self._updater: Updater | None = None

    @classmethod
    def from_file(
        cls,
        client: redis.Redis | None,
        keys: FleetKeys,
        metadata_dir: Path,
        root_file: Path,
        **options: Any,
    ) -> TufClient:
        return cls(client, keys, metadata_dir, Path(root_file).read_bytes(), **options)

    def _new_updater(self) -> Updater:
        # The root kept from the last refresh is trusted over the bootstrap one
        # (it may have rotated since the device was set up).
        kept = self._dir / "root.json"
        bootstrap = kept.read_bytes() if kept.exists() else self._bootstrap
        return Updater(
            metadata_dir=str(self._dir),
            metadata_base_url=self._urls[0],
            target_base_url=self._urls[1],
            fetcher=self._fetcher,
            bootstrap=bootstrap,
        )

    def trusted_root(self) -> Root | None:
        """The newest root this device has verified (kept by the updater in
        ``metadata_dir``), else the one it was set up with."""
        kept = self._dir / "root.json"
        try:
            data = kept.read_bytes() if kept.exists() else self._bootstrap
            return Metadata[Root].from_bytes(data).signed
        except (OSError, ValueError, tuf_errors.RepositoryError):
            return None

    @property
    def root_version(self) -> int | None:
        """The version of the root this device trusts (reported as ``tuf_root_version``)."""
        root = self.trusted_root()
        return root.version if root is not None else None

    def director_keys(self) -> list[bytes] | None:
        """The director's public keys (PEM) the trusted root names, or None when it
        names none (the edge then keeps the ``director_keys`` files, if any)."""
        root = self.trusted_root()
        field = root.unrecognized_fields.get(DIRECTOR_FIELD) if root is not None else None
        if not isinstance(field, dict) or not isinstance(field.get("keys"), dict):
            return None
        pems = []
        for keyid, key in field["keys"].items():
            try:
                if key["keytype"] != "ed25519":
                    raise ValueError(f"key type {key['keytype']!r}")
                raw = bytes.fromhex(key["keyval"]["public"])
                public = Ed25519PublicKey.from_public_bytes(raw)
            except (KeyError, TypeError, ValueError) as e:
                logger.error("TUF root names a director key %s that is unusable: %s", keyid, e)
                continue
            pems.append(
                public.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        return pems

    def refresh(self) -> None:
        """Fetch the newest metadata. An expired timestamp or snapshot sets ``stale``
        (the edge keeps serving what it has); any other failure is TufRefused.

        The repository keeps one file per role (no consistent snapshots), so a publish
        landing between the updater's reads of snapshot and targets hands it a targets
        newer than the snapshot it holds names. That is the repository moving on, not an
        attack: the refresh starts again, up to ``MOVED_ON_RETRIES`` times. Metadata older
        than what it names (a rollback) is refused at once."""
        for attempt in range(MOVED_ON_RETRIES + 1):
            updater = self._new_updater()
            try:
                updater.refresh()
                break
            except tuf_errors.BadVersionNumberError as e:
                self._updater = None
                if attempt < MOVED_ON_RETRIES and _moved_on(str(e)):
                    logger.info("tuf: the repository moved on during a refresh (%s); again", e)
                    continue
                raise TufRefused(f"TUF metadata refused: {type(e).__name__}: {e}") from e
            except tuf_errors.ExpiredMetadataError as e:
                self.stale = True
                self._updater = None
                raise TufRefused(f"TUF metadata expired: {e}") from e
            except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
                self._updater = None
                raise TufRefused(f"TUF metadata refused: {type(e).__name__}: {e}") from e
        self.stale = False
        self.last_refresh = time.time()
        self._updater = updater

    def lists(self, sha256: str) -> bool:
        """Whether the signed targets (as of the last refresh) list version ``sha256``."""
        return self._info(sha256) is not None

    def _info(self, sha256: str) -> Any:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        try:
            return self._updater.get_targetinfo(artifact_path(sha256))
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
            raise TufRefused(f"TUF metadata refused: {type(e).__name__}: {e}") from e

    def manifest(self, sha256: str) -> SignedManifest:
        """The signed manifest the targets carry for version ``sha256`` (as of the last
        refresh). NotInTargets if targets do not list it."""
        return self._manifest(sha256)[0]

    def _manifest(self, sha256: str) -> tuple[SignedManifest, Any, dict[str, Any]]:
        info = self._info(sha256)
        if info is None:
            raise NotInTargets(f"the signed targets do not list {sha256[:12]}")
        custom = info.custom.get("edgeloop") if isinstance(info.custom, dict) else None
        if not isinstance(custom, dict) or not isinstance(custom.get("manifest"), str):
            raise TufRefused(f"target {sha256[:12]} carries no manifest")
        try:
            signed = SignedManifest.from_wire(custom["manifest"])
        except EdgeloopError as e:
            raise TufRefused(f"target {sha256[:12]}: manifest does not parse: {e}") from e
        return signed, info, custom

    def download_patch(self, base_sha256: str, sha256: str) -> bytes | None:
        """The patch from ``base_sha256`` to ``sha256`` if the targets list one (as of
        the last refresh), downloaded through the updater (length and sha256
        enforced); None if they do not. TufRefused if it does not download or verify
        (e.g. its key expired in Redis): the caller fetches the full file."""
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        path = patch_path(base_sha256, sha256)
        try:
            info = self._updater.get_targetinfo(path)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
            raise TufRefused(f"TUF metadata refused: {type(e).__name__}: {e}") from e
        return None if info is None else self._fetch(info, f"patch to {sha256[:12]}")

    def _fetch(self, info: Any, what: str) -> bytes:
        assert self._updater is not None
        fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".target-")
        os.close(fd)
        try:
            self._updater.download_target(info, filepath=tmp)
            return Path(tmp).read_bytes()
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
            raise TufRefused(f"{what} refused: {type(e).__name__}: {e}") from e
        finally:
            Path(tmp).unlink(missing_ok=True)

    def download(self, sha256: str, *, refresh: bool = True) -> VerifiedTarget:
        """Refresh (unless the caller just did), then download version ``sha256``
        through the updater (length and sha256 enforced). NotInTargets if targets do
        not list it."""
        if refresh or self._updater is None:
            self.refresh()
        signed, info, custom = self._manifest(sha256)
        data = self._fetch(info, f"target {sha256[:12]}")
        return VerifiedTarget(
            sha256=sha256,
            artifact=data,
            signed=signed,
            model=str(custom.get("model", "")),
            version=int(custom.get("version", 0)),
        )
