"""Content-addressed blob stores: bytes named by their sha256.

The registry keeps every version's TFLite file here (its metadata is in Redis).
``BlobStore`` is the interface, so that an object store can be added next to
the two implementations below; tests run one contract over every implementation.

- ``DirBlobStore(root)``: files at ``root/ab/cdef…`` (the first two hex digits
  of the sha256 as a directory). A put writes a temp file in the target
  directory, fsyncs it, renames it into place and fsyncs the directory, so a
  crash leaves the whole blob or none of it; a get re-hashes what it reads.
- ``MemoryBlobStore``: a dict, for tests and throwaway tools.

>>> store = MemoryBlobStore()
>>> sha = store.put(b"model")
>>> store.has(sha), store.get(sha)
(True, b'model')
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Protocol

from shared.codec import check_sha256, sha256_hex
from shared.durable import atomic_write
from shared.errors import ConfigError, NotFound

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BlobNotFound(NotFound):
    """No blob by that sha256 in the store."""


class BlobStore(Protocol):
    """Bytes by sha256. ``get`` checks the hash of what it returns (IntegrityError)."""

    def put(self, data: bytes) -> str:
        """Store ``data`` (idempotent) and return its sha256."""
        ...

    def get(self, sha256: str) -> bytes:
        """The bytes named ``sha256``; BlobNotFound if absent, IntegrityError if damaged."""
        ...

    def has(self, sha256: str) -> bool: ...


def _check_name(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise BlobNotFound(f"{sha256[:70]!r} is not a sha256 (64 lowercase hex digits)")
    return sha256


class DirBlobStore:
    """Blobs as files under one directory; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the blob directory {self.root}: {e}") from e

    def __repr__(self) -> str:
        return f"DirBlobStore({str(self.root)!r})"

    def path(self, sha256: str) -> Path:
        sha = _check_name(sha256)
        return self.root / sha[:2] / sha[2:]

    def put(self, data: bytes) -> str:
        sha = sha256_hex(data)
        path = self.path(sha)
        if self._intact(path, sha):
            return sha
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, data)
        return sha

    def get(self, sha256: str) -> bytes:
        try:
            data = self.path(sha256).read_bytes()
        except FileNotFoundError as e:
            raise BlobNotFound(f"no blob {sha256[:12]} in {self.root}") from e
        check_sha256(data, sha256, what=f"blob {sha256[:12]} in {self.root}")
        return data

    def has(self, sha256: str) -> bool:
        try:
            return self.path(sha256).is_file()
        except BlobNotFound:
            return False

    @staticmethod
    def _intact(path: Path, sha: str) -> bool:
        # A damaged file (bit rot, a copy gone wrong) is rewritten, not kept.
        try:
            return sha256_hex(path.read_bytes()) == sha
        except OSError:
            return False


class MemoryBlobStore:
    """Blobs in a dict: nothing survives the process."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    def put(self, data: bytes) -> str:
        sha = sha256_hex(data)
        self._blobs[sha] = bytes(data)
        return sha

    def get(self, sha256: str) -> bytes:
        try:
            data = self._blobs[_check_name(sha256)]
        except KeyError as e:
            raise BlobNotFound(f"no blob {sha256[:12]} in memory") from e
        check_sha256(data, sha256, what=f"blob {sha256[:12]}")
        return data

    def has(self, sha256: str) -> bool:
        return sha256 in self._blobs
